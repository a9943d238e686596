"""`mt3 build-corpus`: real music from music21's bundled corpus, arranged for GM instruments, rendered with fluidsynth,
written in Slakh2100's flac-redux layout so the Slakh converter reads it unchanged.

Why this exists: no dataset can be downloaded here, yet every stage (converters, seqio tasks, training, eval) needs
multi-instrument audio with exact note labels. Rendering real scores (chorales, madrigals, quartets, rags, folk tunes)
gives real harmony, voice leading and rhythm; GM programs, tempo/velocity/transposition/timing jitter and a generated
drum part on ~30 % of pieces give timbre and performance variety; the test split uses a soundfont never heard in
training, so a test score measures generalisation across synthesisers.

Splits: a piece's split is a hash of its music21 path (`piece_split`), 80/10/10, independent of seed and size, so no
two corpora built here ever put one piece in two splits (train on a big corpus, test on a small one: still unseen).

Determinism: one `numpy.random.default_rng(seed)` orders the candidate pieces and draws every per-track choice (piece
seed, target length, soundfont, drums) in the main process; each worker derives everything else from its piece seed,
so the output does not depend on `--workers`. With `--textures`, each track's texture (`mt3.corpus.textures`: plain,
piano reduction, performance) comes from a separate stream (`texture_mix`), so the draws above stay as they were.
Planning runs in rounds: pieces are planned to cover what each split still lacks, built in parallel, and their exact
lengths (integer samples) decide the next round.

Layout: `OUT/{train,validation,test}/TrackNNNNN/{mix.flac, stems/Sxx.flac, MIDI/Sxx.mid, all_src.mid, metadata.yaml}`
plus `OUT/corpus.json`. A track is built in `OUT/.TrackNNNNN.*` and renamed into place when complete, so a re-run
with the same arguments skips finished tracks.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mt3.converters.base import SPLIT_FRACTIONS, SPLITS, hash_split
from mt3.corpus import arrangement as arr
from mt3.corpus import texture_mix
from mt3.corpus.rendering import (
    FLUIDSYNTH_GAIN,
    SAMPLE_RATE,
    TAIL_SECONDS,
    TEST_SOUNDFONTS,
    TRAIN_SOUNDFONTS,
    check_renderer,
    mix_stems,
    render_stems,
    rms_db,
    soundfont_path,
    write_flac,
)
from mt3.corpus.textures import texture_arrangement
from mt3.errors import InputError

log = logging.getLogger(__name__)

TARGET_SECONDS = (20.0, 40.0)  # each piece is cut to a length drawn from this range (or the split's remainder)
MIN_TRACK_SECONDS = 12.0  # a split's last piece is never planned shorter than this
DRUM_FRACTION = 0.3
TARGET_PEAK_DB = -1.0

# music21 corpus folder -> category. Categories get equal-ish sampling mass (weights below) however many works they
# hold, so 1,318 Palestrina movements do not drown the 16 Mozart ones. Folders not listed are not used (demos, theory
# exercises, roman-numeral analyses).
CATEGORY_OF_FOLDER = {
    "bach": "chorale", "palestrina": "renaissance", "monteverdi": "renaissance", "josquin": "renaissance",
    "lusitano": "renaissance", "ciconia": "renaissance", "trecento": "renaissance", "luca": "renaissance",
    "haydn": "quartet", "mozart": "quartet", "beethoven": "quartet", "schumann_robert": "romantic",
    "schumann_clara": "romantic", "chopin": "romantic", "schubert": "romantic", "beach": "romantic",
    "weber": "romantic", "joplin": "popular", "leadSheet": "popular", "liliuokalani": "popular",
    "johnson_j_r": "popular", "verdi": "popular", "handel": "baroque", "corelli": "baroque", "cpebach": "baroque",
    "schoenberg": "modern", "webern": "modern", "ryansMammoth": "folk", "oneills1850": "folk",
    "essenFolksong": "folk", "airdsAirs": "folk", "miscFolk": "folk",
}
VOICES_AS_TUNES = {"josquin"}  # ABC files whose X: entries are the voices of one piece (merged on parsing)
CATEGORY_WEIGHTS = {"chorale": 3.0, "renaissance": 2.0, "quartet": 2.0, "folk": 2.5, "romantic": 1.0,
                    "popular": 1.0, "baroque": 0.7, "modern": 0.3}
# Rough parse + repeat-expansion seconds per byte of file; used only to keep small builds on quick-to-parse works.
_COST_PER_BYTE = {".mxl": 5e-5, ".xml": 1.2e-6, ".musicxml": 1.2e-6, ".krn": 2.5e-5, ".abc": 1e-5}


@dataclass(frozen=True)
class Source:
    """One work of music21's corpus: a file, plus the tune number inside an ABC tune book (an opus)."""

    path: str  # relative to music21's corpus folder, with extension (what `corpus.parse` accepts)
    number: int | None
    category: str
    cost: float  # estimated parse seconds

    @property
    def key(self) -> str:
        """Unique id; stored as `lmd_midi_dir` in metadata.yaml (Slakh keeps its Lakh MIDI source there)."""
        return self.path if self.number is None else f"{self.path}#{self.number}"


def cost_budget(minutes: float) -> float:
    """Largest estimated parse cost allowed: small builds (tests, CI) only use works that parse in well under 1 s."""
    return 0.6 + minutes / 10.0


@functools.lru_cache(maxsize=1)
def _all_sources() -> tuple[Source, ...]:
    from music21 import common, corpus

    root = Path(common.getCorpusFilePath())
    out: list[Source] = []
    for p in sorted(Path(p) for p in corpus.getPaths()):
        rel = p.relative_to(root).as_posix()
        folder, ext = rel.split("/", 1)[0], p.suffix.lower()
        category = CATEGORY_OF_FOLDER.get(folder)
        if category is None or ext not in _COST_PER_BYTE or "choraleAnalyses" in rel:
            continue
        size = p.stat().st_size
        if ext == ".abc":
            numbers = [int(n) for n in re.findall(r"^X:\s*(\d+)", p.read_text(errors="replace"), re.M)]
            if len(numbers) > 1 and folder not in VOICES_AS_TUNES:  # a tune book: parse one tune of it by number
                per_tune = 0.03 + size * 1e-7
                out.extend(Source(rel, n, category, per_tune) for n in dict.fromkeys(numbers))
                continue
        out.append(Source(rel, None, category, size * _COST_PER_BYTE[ext]))
    return tuple(out)


def build_catalog(max_cost: float | None = None) -> list[Source]:
    """Candidate works (deterministic order), optionally only those estimated to parse within `max_cost` seconds."""
    return [s for s in _all_sources() if max_cost is None or s.cost <= max_cost]


def weighted_order(catalog: list[Source], rng: np.random.Generator) -> list[Source]:
    """A random order of all works where each category's total weight is CATEGORY_WEIGHTS (sampling w/o replacement,
    Efraimidis-Spirakis keys), so early picks are varied and any prefix of the order is a varied set."""
    counts: dict[str, int] = {}
    for s in catalog:
        counts[s.category] = counts.get(s.category, 0) + 1
    weights = np.array([CATEGORY_WEIGHTS[s.category] / counts[s.category] for s in catalog])
    keys = np.log(rng.random(len(catalog))) / weights
    return [catalog[i] for i in np.argsort(-keys, kind="stable")]


def piece_split(source: Source) -> str:
    """The split a piece always belongs to, from a hash of its key: stable across seeds, corpus sizes and versions."""
    return hash_split(source.key)


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to build one track; drawn in the main process so output is worker-independent."""

    track_id: str
    split: str
    source: Source
    seed: int
    target_seconds: float
    soundfont: str
    drums: bool
    stem_soundfonts: tuple[str, ...] = ()  # non-empty: each stem draws its bank from these (timbre diversity)
    texture: str | None = None  # textures.TEXTURES; None: arranged, in a corpus built without --textures (not recorded)

    def stem_fonts(self, num_stems: int) -> list[str]:
        """The bank of each stem: the track's one bank, or a per-stem draw from `stem_soundfonts` (seeded)."""
        if not self.stem_soundfonts:
            return [self.soundfont] * num_stems
        rng = np.random.default_rng([self.seed, 11])
        return [self.stem_soundfonts[int(i)] for i in rng.integers(len(self.stem_soundfonts), size=num_stems)]


class Planner:
    """Plans tracks in rounds until every split holds its share (80/10/10 by duration) and at least one track."""

    def __init__(self, minutes: float, seed: int, catalog: list[Source] | None = None,
                 soundfonts: tuple[str, ...] = TRAIN_SOUNDFONTS, per_stem: bool = False,
                 textures: dict[str, float] | None = None):
        self.soundfonts, self.per_stem = tuple(soundfonts), per_stem
        self.rng = np.random.default_rng(seed)
        # Texture draws come from their own stream, so the default corpus's draws above stay exactly as they were.
        self.textures = None if texture_mix.is_default(textures) else textures
        self.texture_rng = np.random.default_rng([seed, texture_mix.STREAM])
        order = weighted_order(build_catalog(cost_budget(minutes)) if catalog is None else catalog, self.rng)
        self.queues = {s: [src for src in order if piece_split(src) == s] for s in SPLITS}  # each a varied order
        self.cursors = dict.fromkeys(SPLITS, 0)
        self.next_number = 1
        self.target_samples = {s: int(60 * minutes * SPLIT_FRACTIONS[s] * SAMPLE_RATE) for s in SPLITS}
        self.done_samples = dict.fromkeys(SPLITS, 0)
        self.done_tracks = dict.fromkeys(SPLITS, 0)

    def record(self, split: str, num_samples: int) -> None:
        self.done_samples[split] += int(num_samples)
        self.done_tracks[split] += 1

    def next_jobs(self) -> list[Job]:
        """Jobs for the next round (empty when done or when the catalog is exhausted)."""
        jobs: list[Job] = []
        for split in SPLITS:
            deficit = (self.target_samples[split] - self.done_samples[split]) / SAMPLE_RATE
            planned = 0
            while deficit > MIN_TRACK_SECONDS / 2 or (self.done_tracks[split] == 0 and planned == 0):
                if self.cursors[split] >= len(self.queues[split]):
                    log.warning("music21 corpus exhausted for the %s split: the corpus is smaller than asked", split)
                    break
                source = self.queues[split][self.cursors[split]]
                self.cursors[split] += 1
                seed = int(self.rng.integers(0, 2**63 - 1))
                target = min(float(self.rng.uniform(*TARGET_SECONDS)), max(deficit, MIN_TRACK_SECONDS))
                font = self.soundfonts[int(self.rng.integers(len(self.soundfonts)))]
                drums = bool(self.rng.random() < DRUM_FRACTION)
                pool = self.soundfonts if self.per_stem else ()
                if split == "test":
                    font, pool = TEST_SOUNDFONTS[0], ()
                texture = texture_mix.draw(self.texture_rng, self.textures) if self.textures else None
                drums = drums and texture in (None, "arranged")
                jobs.append(Job(f"Track{self.next_number:05d}", split, source, seed, round(target, 3), font, drums,
                                pool, texture))
                self.next_number += 1
                deficit -= target
                planned += 1
        return jobs


# ---------------------------------------------------------------------------------------------------------------------
# One track


def _write_midi(path: Path, instruments: list, qpm: float) -> None:
    import pretty_midi

    from mt3.data.records import atomic_write

    pm = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=qpm)
    pm.instruments.extend(instruments)
    with atomic_write(path, "wb") as f:
        pm.write(f)


def _write_yaml(path: Path, obj) -> None:
    import yaml

    from mt3.data.records import atomic_write

    with atomic_write(path, "w") as f:
        yaml.safe_dump(obj, f, sort_keys=True, default_flow_style=False)


def track_metadata(job: Job, arrangement: arr.Arrangement, mix, stems_db: list[float | None]) -> dict:
    """metadata.yaml with Slakh2100's keys (values documented in datasets/local_corpus.md), plus `texture`."""
    fonts = job.stem_fonts(len(arrangement.instruments))
    uid = uuid.UUID(bytes=np.random.default_rng([job.seed, 7]).bytes(16), version=4)
    stems = {}
    for i, inst in enumerate(arrangement.instruments):
        stems[f"S{i:02d}"] = {
            "audio_rendered": True,
            "inst_class": "Drums" if inst.is_drum else arr.gm_family(inst.program),
            "integrated_loudness": stems_db[i],
            "is_drum": bool(inst.is_drum),
            "midi_program_name": "Drums" if inst.is_drum else arr.program_name(inst.program),
            "midi_saved": True,
            "plugin_name": fonts[i],
            "program_num": 128 if inst.is_drum else int(inst.program),
        }
    meta = {
        "UUID": str(uid),
        "audio_dir": "stems",
        "lmd_midi_dir": job.source.key,
        "midi_dir": "MIDI",
        "normalization_factor": round(mix.gain_db, 4),
        "normalized": True,
        "overall_gain": round(float(mix.gain), 6),
        "stems": stems,
        "target_peak": mix.target_peak,
    }
    if job.texture is not None:  # one key beyond Slakh's, only in corpora built with --textures
        meta["texture"] = job.texture
    return meta


def _summary(job: Job, track_dir: Path, status: str) -> dict:
    import soundfile as sf
    import yaml

    meta = yaml.safe_load((track_dir / "metadata.yaml").read_text())
    if meta.get("lmd_midi_dir") != job.source.key:
        raise InputError(track_dir, f"holds {meta.get('lmd_midi_dir')!r}, but this run plans {job.source.key!r} "
                                    "there: it was built with another --seed/--minutes; use a new --out")
    if meta.get("texture") != job.texture:
        raise InputError(track_dir, f"holds texture {meta.get('texture') or 'arranged'!r}, but this run plans "
                                    f"{job.texture or 'arranged'!r} there: it was built with other --textures; use a "
                                    "new --out")
    stems = meta["stems"]
    summary = {
        "id": job.track_id, "split": job.split, "source": job.source.key, "status": status,
        "samples": int(sf.info(str(track_dir / "mix.flac")).frames),
        "soundfont": "+".join(sorted({s["plugin_name"] for s in stems.values()})),
        "drums": any(s["is_drum"] for s in stems.values()),
        "programs": [int(s["program_num"]) for s in stems.values()],
    }
    if job.texture is not None:
        summary["texture"] = job.texture
    return summary


def build_track(job: Job, out_dir: str | os.PathLike) -> dict:
    """Builds (or finds finished) one track; returns its summary, or `status: skipped` for an unusable score."""
    out_dir = Path(out_dir)
    final = out_dir / job.split / job.track_id
    if (final / "metadata.yaml").exists():
        return _summary(job, final, "existing")
    try:
        if job.texture in (None, "arranged"):
            arrangement = arr.arrange(job.source, seed=job.seed, target_seconds=job.target_seconds, drums=job.drums)
        else:
            arrangement = texture_arrangement(job.source, job.texture, seed=job.seed,
                                              target_seconds=job.target_seconds)
    except arr.SkipPiece as err:
        return {"id": job.track_id, "split": job.split, "source": job.source.key, "status": "skipped",
                "reason": str(err)}
    label = f"{job.split}/{job.track_id} ({job.source.key})"
    num_samples = int(math.ceil((arrangement.end_seconds + TAIL_SECONDS) * SAMPLE_RATE))
    fonts = job.stem_fonts(len(arrangement.instruments))
    raw = np.zeros((len(fonts), num_samples), np.float32)
    for font in sorted(set(fonts)):  # one fluidsynth call per bank
        which = [i for i, f in enumerate(fonts) if f == font]
        raw[which] = render_stems([arrangement.instruments[i] for i in which], soundfont_path(font),
                                  num_samples=num_samples, label=label)
    for i, inst in enumerate(arrangement.instruments):
        if np.abs(raw[i]).max() < 1e-5:
            raise RuntimeError(f"{label}: stem S{i:02d} (program {inst.program}, drum={inst.is_drum}, "
                               f"{len(inst.notes)} notes) rendered silent with {fonts[i]}")
    mix = mix_stems(raw, target_peak=TARGET_PEAK_DB)
    stems_db = [rms_db(s) for s in mix.stems]
    tmp = Path(tempfile.mkdtemp(prefix=f".{job.track_id}.", dir=out_dir))
    try:
        for i, inst in enumerate(arrangement.instruments):
            write_flac(tmp / "stems" / f"S{i:02d}.flac", mix.stems[i])
            _write_midi(tmp / "MIDI" / f"S{i:02d}.mid", [arr.copy_instrument(inst)], arrangement.qpm)
        write_flac(tmp / "mix.flac", mix.mix)
        _write_midi(tmp / "all_src.mid", [arr.copy_instrument(i) for i in arrangement.instruments], arrangement.qpm)
        _write_yaml(tmp / "metadata.yaml", track_metadata(job, arrangement, mix, stems_db))
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _summary(job, final, "built")


def _run_job(payload: tuple[Job, str]) -> dict:
    """Pool entry point. Exceptions travel back as data: InputError's two-argument constructor does not unpickle."""
    import warnings

    warnings.filterwarnings("ignore")
    job, out_dir = payload
    try:
        return build_track(job, out_dir)
    except InputError as err:
        return {"status": "error", "kind": "input", "path": err.path, "problem": err.problem}
    except Exception as err:  # noqa: BLE001 - re-raised in the main process
        return {"status": "error", "kind": "runtime", "problem": f"{job.split}/{job.track_id} ({job.source.key}): "
                                                                 f"{type(err).__name__}: {err}"}


# ---------------------------------------------------------------------------------------------------------------------
# The corpus


def _remove_stale_temp_dirs(out_dir: Path) -> None:
    for p in out_dir.glob(".Track*.*"):
        if p.is_dir() and re.fullmatch(r"\.Track\d{5}\..+", p.name):
            shutil.rmtree(p, ignore_errors=True)


def build_corpus(out_dir: str | os.PathLike, *, minutes: float, seed: int = 0, workers: int = 2,
                 progress: bool = True, soundfonts: tuple[str, ...] = TRAIN_SOUNDFONTS,
                 per_stem_soundfonts: bool = False, textures: dict[str, float] | None = None) -> dict:
    """Builds (or resumes) a local corpus of about `minutes` minutes of audio; returns what corpus.json holds.

    `soundfonts`: the banks of the train and validation splits (the test split always uses TEST_SOUNDFONTS); each track
    draws one, or with `per_stem_soundfonts` each stem draws its own, so one mix blends banks (timbre diversity).
    `textures`: {texture: weight} (`texture_mix`), each track's texture drawn with these odds; None or `arranged`
    alone: every track arranged, the corpus exactly as built without the option.
    """
    textures = None if textures is None else texture_mix.normalise(textures)
    textures = None if texture_mix.is_default(textures) else textures
    soundfonts = tuple(soundfonts)
    banned = [f for f in soundfonts if f in TEST_SOUNDFONTS or f.lower().startswith("musescore")]
    if banned or not soundfonts:
        raise InputError(None, f"--soundfonts must name training banks, not the test timbre: {banned or 'none given'}")
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if not minutes > 0:
        raise InputError(None, f"--minutes must be positive, got {minutes}")
    if workers < 1:
        raise InputError(None, f"--workers must be >= 1, got {workers}")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a directory")
    previous = out_dir / "corpus.json"
    if previous.exists():
        import json

        try:
            old = json.loads(previous.read_text())
        except ValueError:
            old = {}
        old_fonts = (tuple(old.get("soundfonts", TRAIN_SOUNDFONTS)), bool(old.get("per_stem_soundfonts", False)))
        old_textures = old.get("textures")
        if ((old.get("seed"), old.get("minutes")) != (seed, minutes) or old_fonts != (soundfonts, per_stem_soundfonts)
                or old_textures != textures):
            raise InputError(out_dir, f"holds a corpus built with --seed {old.get('seed')} --minutes "
                                      f"{old.get('minutes')} --soundfonts {','.join(old_fonts[0])}"
                                      f"{' --per-stem-soundfonts' if old_fonts[1] else ''} --textures "
                                      f"{texture_mix.describe(old_textures or {'arranged': 1.0})}; to build another "
                                      "--seed/--minutes/--soundfonts/--textures use a new --out")
    check_renderer(soundfonts + TEST_SOUNDFONTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(out_dir)

    planner = Planner(minutes, seed, soundfonts=soundfonts, per_stem=per_stem_soundfonts, textures=textures)
    tracks: list[dict] = []
    skipped: list[dict] = []
    pool = None
    if workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers)
    bar = tqdm(total=0, unit="track", desc="build-corpus", disable=not progress)
    try:
        while jobs := planner.next_jobs():
            bar.total += len(jobs)
            bar.refresh()
            payloads = [(job, str(out_dir)) for job in jobs]
            results = pool.imap_unordered(_run_job, payloads) if pool else map(_run_job, payloads)
            for res in results:
                if res["status"] == "error":
                    if res["kind"] == "input":
                        raise InputError(res["path"], res["problem"])
                    raise RuntimeError(res["problem"])
                if res["status"] == "skipped":
                    log.warning("skipping %s: %s", res["source"], res["reason"])
                    skipped.append({"source": res["source"], "reason": res["reason"]})
                else:
                    planner.record(res["split"], res["samples"])
                    tracks.append(res)
                bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()

    tracks.sort(key=lambda t: t["id"])
    summary = {
        "seed": seed,
        "minutes": minutes,
        "sample_rate": SAMPLE_RATE,
        "fluidsynth_gain": FLUIDSYNTH_GAIN,
        "soundfonts": list(soundfonts),
        "per_stem_soundfonts": per_stem_soundfonts,
        "target_peak": TARGET_PEAK_DB,
        "splits": {
            split: {
                "tracks": sum(t["split"] == split for t in tracks),
                "seconds": round(sum(t["samples"] for t in tracks if t["split"] == split) / SAMPLE_RATE, 3),
                "sources": [t["source"] for t in tracks if t["split"] == split],
            }
            for split in SPLITS
        },
        "tracks": [{k: t[k] for k in ("id", "split", "source", "samples", "soundfont", "drums", "programs", "texture")
                    if k in t} for t in tracks],
        "skipped": skipped,
    }
    if textures is not None:  # absent: every track arranged (the corpus as built before textures existed)
        summary["textures"] = textures
    from mt3.data.records import atomic_write_json

    atomic_write_json(out_dir / "corpus.json", summary)
    return summary

