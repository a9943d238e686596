"""The `mt3 prepare-data` driver and the helpers every converter shares.

`prepare_dataset` runs one converter (protocol in `mt3.converters`) over a native dataset tree: it lists the tracks,
loads them in a process pool (ordered `imap`, so shards are byte-for-byte deterministic for any worker count), and
writes each split through `records.ShardWriter`. That gives every dataset the same guarantees for free:

- atomic splits: a split's shards appear only together with its manifest; a failure removes the temporary shards;
- resume: a split whose manifest says it is complete is skipped, so a re-run after a crash only redoes what is missing;
- `skip_bad`: a track whose files are broken (`InputError`) is logged, listed in `{split}.skipped.json` and left out,
  instead of aborting the whole split.

Optional protocol extension: a converter whose `list_tracks` accepts a `flat_split` keyword (Slakh, Cerberus4) can put
a layout that has no split folders (babyslakh) into a split the user chose: `--splits validation` on such a tree calls
`list_tracks(root, flat_split="validation")`.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from mt3.converters import CONVERTERS
from mt3.data.records import SAMPLE_RATE, TrackRecord, atomic_write_json, read_manifest, split_is_complete
from mt3.errors import InputError

SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def hash_split(key: str) -> str:
    """The split of an item from a sha256 of `key`, cut 80/10/10. Why a hash: the same item lands in the same split
    whatever else is in the folder or corpus (any seed, size or order), so test material never leaks into training.
    Shared by `mt3 build-corpus` (a piece's music21 path) and `prepare-data pairs` (a pair's relative path)."""
    u = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    edge = 0.0
    for split in SPLITS:
        edge += SPLIT_FRACTIONS[split]
        if u < edge:
            return split
    return SPLITS[-1]

logger = logging.getLogger("mt3.converters")

# Default shard size: about 64 tracks per shard (MAESTRO train -> 16 shards, Slakh redux train -> 21).
TRACKS_PER_SHARD = 64


# --------------------------------------------------------------------------------------------------------------------
# Helpers shared by converters


def load_audio(path: str | os.PathLike, *, allow_silence: bool = False) -> np.ndarray:
    """Any audio file -> mono float32 at 16 kHz (`InputError` naming the file if missing, unreadable or empty).

    `mt3.audio.load_audio` (librosa's steps: average channels, soxr HQ); `allow_silence` for stems, which may
    legitimately be digital silence, whereas a silent mix means a broken file.
    """
    from mt3.audio import load_audio as _load_audio

    return _load_audio(path, sample_rate=SAMPLE_RATE, allow_silence=allow_silence)


def mix_audio(signals: Iterable[np.ndarray]) -> np.ndarray:
    """Sums mono signals of possibly different lengths (shorter ones are zero-padded at the end)."""
    signals = list(signals)
    if not signals:
        raise ValueError("mix_audio needs at least one signal")
    out = np.zeros(max(len(s) for s in signals), dtype=np.float32)
    for s in signals:
        out[: len(s)] += s
    return out


def apply_sustain_and_clear(ns):
    """Extends offsets by the sustain pedal (CC 64, as MT3 does before tokenising) and drops all control changes.

    After this the NoteSequence holds what MT3's references hold: pedal-extended notes and no pedal events, so a
    later `apply_sustain_control_changes` is a no-op. Pitch bends are dropped too (MT3 ignores them for every dataset
    our converters produce). Returns a new NoteSequence; `total_time` covers the extended notes.
    """
    import note_seq

    out = note_seq.apply_sustain_control_changes(ns)
    del out.control_changes[:]
    del out.pitch_bends[:]
    out.total_time = max([out.total_time] + [n.end_time for n in out.notes])
    return out


def count_notes(ns) -> tuple[int, int]:
    """(pitched notes, drum notes) of a NoteSequence."""
    drums = sum(1 for n in ns.notes if n.is_drum)
    return len(ns.notes) - drums, drums


def load_converter(name: str):
    """The converter module of dataset `name` (as typed on the command line), or a user's converter module given by
    its dotted path (`my_project.mydata`: a new native layout without editing this package; a module in the working
    directory imports as with `python -m`)."""
    if name not in CONVERTERS and "." in name:
        import os
        import sys

        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            raise InputError(None, f"converter module {name!r}: no module {err.name!r} (on PYTHONPATH or in the "
                                   f"working directory?)") from err
        missing = [attr for attr in ("NAME", "SPLITS", "list_tracks", "load_track") if not hasattr(module, attr)]
        if missing:
            raise InputError(module.__file__, f"not a converter: no {', '.join(missing)} (the protocol: "
                                              f"mt3/converters/__init__.py)")
        return module
    if name not in CONVERTERS:
        raise InputError(None, f"unknown dataset {name!r}; choose one of: {', '.join(sorted(CONVERTERS))}, or a "
                               f"converter module's dotted path (my_project.mydata)")
    return importlib.import_module(CONVERTERS[name])


# --------------------------------------------------------------------------------------------------------------------
# The driver


def default_num_shards(num_sources: int) -> int:
    return max(1, math.ceil(num_sources / TRACKS_PER_SHARD))


def skipped_path(out_dir: str | os.PathLike, split: str) -> Path:
    return Path(out_dir) / f"{split}.skipped.json"


LABELS_PAST_AUDIO_TOLERANCE = 1.0  # seconds notes may end after the audio (release tails, rounding) before refusal


def labels_past_audio(source, records: list[TrackRecord]) -> tuple[str | None, str] | None:
    """(file, problem) when a record's notes end more than the tolerance after its audio: a truncated download (a
    2 s .wav beside a 704 s MIDI) would otherwise become silent bad training data. Checked once here, for every
    converter."""
    for record in records:
        audio_seconds = len(record.audio) / record.sample_rate
        notes_end = max((n.end_time for n in record.sequence.notes), default=0.0)
        if notes_end > audio_seconds + LABELS_PAST_AUDIO_TOLERANCE:
            where = next((getattr(source, a) for a in ("audio_path", "path", "folder") if hasattr(source, a)), None)
            return (str(where) if where is not None else None,
                    f"track {record.id!r}: notes end at {notes_end:.1f} s but the audio holds {audio_seconds:.1f} s "
                    f"(truncated audio?)")
    return None


def _load_one(job: tuple[str, object]) -> tuple[list[TrackRecord] | None, tuple[str | None, str] | None]:
    """Worker body: never raises `InputError` across the process boundary (its pickling would lose the message)."""
    module_name, source = job
    module = importlib.import_module(module_name)
    try:
        records = module.load_track(source)
    except InputError as err:
        return None, (err.path, err.problem)
    bad = labels_past_audio(source, records)
    return (None, bad) if bad is not None else (records, None)


def _list_tracks(module, root: Path, splits: list[str] | None, options: dict | None = None) -> dict[str, list]:
    params = inspect.signature(module.list_tracks).parameters
    kwargs = dict(options or {})
    for key in kwargs:
        if key not in params or key == "root":
            accepted = sorted(k for k in params if k != "root") or ["none"]
            raise InputError(None, f"{module.NAME} takes no option {key!r} (accepted: {', '.join(accepted)})")
    if splits and len(splits) == 1 and "flat_split" in params:
        kwargs.setdefault("flat_split", splits[0])
    return module.list_tracks(root, **kwargs)


def prepare_dataset(
    name: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    skip_bad: bool = False,
    workers: int = 1,
    num_shards: int | None = None,
    splits: Iterable[str] | None = None,
    options: dict | None = None,
) -> dict[str, dict]:
    """Converts dataset `name` from its native tree at `root` into shards + manifests under `out`.

    Returns {split: manifest} for every split handled (also those already complete). Each manifest returned carries two
    extra in-memory keys: `skipped` (list of {"id", "path", "problem"}) and `resumed` (True if the split was complete
    before this run). `options` are converter-specific keyword arguments of its `list_tracks` (e.g. GuitarSet's
    `audio_sources=("mic", "mix")`, Slakh's `program_mapping="slakh_class"`). Raises InputError for a bad tree, or for
    a bad track unless `skip_bad` is set.
    """
    module = load_converter(name)
    root, out = Path(root), Path(out)
    if not root.exists():
        raise InputError(root, "dataset root not found")
    check_out = getattr(module, "check_out", None)  # optional: a converter whose --out name means something (pairs)
    if check_out is not None:
        check_out(out)
    if workers < 1:
        raise InputError(None, f"--workers must be >= 1, got {workers}")
    if num_shards is not None and num_shards < 1:
        raise InputError(None, f"--num-shards must be >= 1, got {num_shards}")
    wanted = list(splits) if splits is not None else None
    listing = _list_tracks(module, root, wanted, options)
    if wanted is None:
        wanted = [s for s in listing if listing[s]]
    for split in wanted:
        if not listing.get(split):
            found = ", ".join(f"{s} ({len(v)})" for s, v in listing.items() if v) or "none"
            raise InputError(root, f"no {name} tracks for split {split!r} (splits found: {found})")

    results: dict[str, dict] = {}
    pool = None
    try:
        for split in wanted:
            fields = _manifest_fields(module, listing[split])
            if split_is_complete(out, split):
                _check_resumed_fields(out, split, fields)
                logger.info("%s %s: already complete in %s, skipping (delete its manifest to redo)", name, split, out)
                manifest = read_manifest(out, split)
                manifest["skipped"] = _read_skipped(skipped_path(out, split))
                manifest["resumed"] = True
                results[split] = manifest
                continue
            if workers > 1 and pool is None:
                # spawn, not fork: the parent may hold TensorFlow's threads (ShardWriter), which fork can deadlock
                pool = multiprocessing.get_context("spawn").Pool(workers)
            results[split] = _convert_split(
                module, split, listing[split], out, skip_bad=skip_bad, pool=pool,
                num_shards=num_shards or default_num_shards(len(listing[split])), manifest_fields=fields,
            )
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return results


def _manifest_fields(module, sources: list) -> dict:
    """What the converter records about a split in its manifest (optional `manifest_fields(sources)`)."""
    fn = getattr(module, "manifest_fields", None)
    return dict(fn(sources)) if fn is not None else {}


def _check_resumed_fields(out: Path, split: str, fields: dict) -> None:
    """A complete split is reused only if it was written the way this run would write it (e.g. its programs)."""
    from mt3.data.records import manifest_path
    from mt3.datasets import recorded_program_mapping

    manifest = read_manifest(out, split)
    for key, wanted in fields.items():
        recorded = recorded_program_mapping(manifest) if key == "program_mapping" else manifest.get(key)
        if recorded != wanted:
            raise InputError(manifest_path(out, split), f"split {split!r} is already prepared with {key}={recorded}, "
                                                        f"this run asks for {key}={wanted}; use another --out, or "
                                                        "delete the folder to redo it")


def _read_skipped(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())["skipped"]
    except (ValueError, KeyError):
        return []


def _convert_split(module, split: str, sources: list, out: Path, *, skip_bad: bool, pool, num_shards: int,
                   manifest_fields: dict | None = None) -> dict:
    from tqdm import tqdm

    from mt3.data.records import ShardWriter

    ids = [s.id for s in sources]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(None, f"{module.NAME} {split}: duplicate track ids {dup[:5]}")
    jobs = [(module.__name__, s) for s in sources]
    results: Iterator = pool.imap(_load_one, jobs) if pool is not None else map(_load_one, jobs)
    skipped: list[dict] = []
    empty_sources = 0
    seen_ids: set[str] = set()
    with ShardWriter(out, split, module.NAME, num_shards=num_shards, manifest_fields=manifest_fields) as writer:
        for source, (records, error) in tqdm(zip(sources, results), total=len(sources), desc=f"{module.NAME} {split}",
                                             unit="track", dynamic_ncols=True):
            if error is not None:
                path, problem = error
                if not skip_bad:
                    raise InputError(path, problem)
                logger.warning("skipping %s: %s: %s", source.id, path, problem)
                skipped.append({"id": source.id, "path": path, "problem": problem})
                continue
            if not records:
                empty_sources += 1
                continue
            for record in records:
                if record.id in seen_ids:
                    raise InputError(None, f"{module.NAME} {split}: duplicate record id {record.id!r}")
                seen_ids.add(record.id)
                writer.write(record)
        # Written before the manifest (ShardWriter's exit), so a complete split always has its skip list beside it.
        path = skipped_path(out, split)
        if skipped:
            atomic_write_json(path, {"dataset": module.NAME, "split": split, "skipped": skipped})
        elif path.exists():
            path.unlink()
    if empty_sources:
        logger.info("%s %s: %d of %d sources gave no records", module.NAME, split, empty_sources, len(sources))
    manifest = read_manifest(out, split)
    manifest["skipped"] = skipped
    manifest["resumed"] = False
    manifest["sources_without_records"] = empty_sources
    return manifest
