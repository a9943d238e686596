"""Benchmark: held-out sets no training recipe may touch, our model beside Basic Pitch (issue 16, section 1).

Sets (built once from a local corpus with `--build`, kept as prepared records under `--root`, default data/heldout):
- `multi`:  the corpus's test split as rendered (music21 scores of test-split pieces, multi-instrument arrangements,
            the held-out MuseScore General soundfont: never heard in training);
- `piano`:  the same test-split pieces as solo piano (every pitched part on GM program 0, drums dropped), rendered
            with MuseScore General;
- `level`:  `multi` and `piano` again at -20 dB and -30 dB (files scaled at scoring time), relative to 0 dB;
- `timbre`: the corpus's validation split re-rendered with TiMidity++ and freepats, a synth engine and samples used
            neither in training nor in the test set. This is the recipe-selection set: select on `timbre`, report on
            `multi`/`piano`/`level`, never the other way round.
- `plain`, `piano_dense`, `performance` (issue 27; `benchmarks/heldout_sets.py`, read from music21 scores, no corpus
            needed): test-split pieces in their own score instrumentation; keyboard works and piano reductions of the
            densest scores; humanised pieces (rubato, onset jitter, phrase dynamics, sustain pedal). Not made by our
            arrangement module, so they do not share the training data's arrangement style.
A piece's split is a hash of its music21 path, so no corpus (any seed, any size) trains on these pieces.
Every render is peak-normalised to the corpus mixes' -1 dBFS, so "0 dB" is the training level.

Scoring is `benchmarks.compare_peers.run` (the code and averaging of `mt3 eval`; drums excluded from the agnostic
scores), once per set and level, with Basic Pitch beside ours unless `--no-peer` (the quick per-checkpoint selection
run on `timbre`). Each row also gives the instruments per file (`compare_peers.program_count`: distinct programs, drums
counting as one), ours vs the reference's, mean and max over the set's files.

Usage:
  .venv/bin/python -m benchmarks.heldout --build [--corpus data/corpus_big] [--sets ...]  # -> data/heldout (minutes)
      (`--build --sets plain,piano_dense,performance` needs no corpus)
  .venv/bin/python -m benchmarks.heldout [--checkpoint DIR] [--sets multi,piano,level,timbre] [--no-peer]
      [--max-tracks N] [--out benchmarks/results/heldout.md]
Writes the markdown table and FILE.json beside it, atomically; prints the table.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import datetime  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO / "data" / "heldout"
DEFAULT_CORPUS = REPO / "data" / "corpus_big"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "heldout.md"
CORPUS_SETS = ("multi", "piano", "level", "timbre")
SCORE_SETS = ("plain", "piano_dense", "performance")  # benchmarks/heldout_sets.py: built from music21 scores directly
SETS = CORPUS_SETS + SCORE_SETS
LEVELS_DB = (-20.0, -30.0)
# Kept per track: score-set tracks are also averaged by texture under the table (`group_lines`), since voices, string
# quartets and piano differ a lot for both systems.
TRACK_KEYS = ("onset_f1", "onset_offset_f1")
PEAK_DB = -1.0  # the corpus mixes' peak (mt3.corpus.builder.TARGET_PEAK_DB)
# (set folder, source split of the corpus, bank, how the notes are changed); all stored as split "test"
BUILDS = {
    "multi": ("test", None, "as rendered"),
    "piano": ("test", "MuseScore_General_Lite.sf3", "solo piano"),
    "timbre": ("validation", "timidity+freepats", "as arranged"),
}


# ---------------------------------------------------------------------------------------------------------------------
# build


def solo_piano(ns):
    """The pitched notes of `ns` on one GM acoustic grand piano (program 0); drums dropped."""
    import note_seq

    out = note_seq.NoteSequence()
    out.CopyFrom(ns)
    del out.notes[:]
    for n in ns.notes:
        if not n.is_drum:
            m = out.notes.add()
            m.CopyFrom(n)
            m.program, m.instrument = 0, 0
    return out


def render_sequence(ns, bank: str, num_samples: int):
    """`ns` written as MIDI and rendered with `bank` (a soundfont, or TiMidity++ + freepats), peak-normalised."""
    import note_seq
    import numpy as np

    from mt3.corpus import rendering

    with tempfile.TemporaryDirectory(prefix="heldout.") as tmp:
        midi = Path(tmp) / "in.mid"
        note_seq.sequence_proto_to_midi_file(ns, str(midi))
        audio = rendering.render_midi(midi, bank, num_samples=num_samples)
    peak = float(np.abs(audio).max(initial=0.0))
    if peak <= 1e-6:
        raise RuntimeError(f"{bank} rendered silence")
    return (audio * (10.0 ** (PEAK_DB / 20.0) / peak)).astype(np.float32)


def build(corpus: Path, prepared: Path, root: Path) -> None:
    """Builds the sets from `prepared` (the corpus's prepared records; prepared from `corpus` first if missing)."""
    from tqdm import tqdm

    from mt3.cli import main as cli_main
    from mt3.data import records

    if not records.split_is_complete(prepared, "test"):
        if not (corpus / "corpus.json").exists():
            raise SystemExit(f"{corpus}: no built corpus (mt3 build-corpus --out {corpus} --minutes 160 --seed 1)")
        if cli_main(["prepare-data", "slakh", "--root", str(corpus), "--out", str(prepared)]) != 0:
            raise SystemExit(f"prepare-data failed for {corpus}")
    for name, (split, bank, _) in BUILDS.items():
        if records.split_is_complete(root / name, "test"):
            print(f"{name}: exists ({root / name})")
            continue
        recs = list(records.read_records(records.shard_paths(prepared, split)))
        with records.ShardWriter(root / name, "test", "heldout") as writer:
            for rec in tqdm(recs, desc=name, unit="track"):
                ns = solo_piano(rec.sequence) if name == "piano" else rec.sequence
                audio = rec.audio if bank is None else render_sequence(ns, bank, len(rec.audio))
                writer.write(records.TrackRecord(id=f"{name}/{rec.id}", audio=audio, sequence=ns, dataset="heldout"))
        print(f"{name}: {len(recs)} tracks -> {root / name}")


def build_score_sets(names: list[str], root: Path) -> None:
    """The sets of benchmarks/heldout_sets.py (music21 scores only; no corpus needed)."""
    from benchmarks import heldout_sets
    from mt3.data import records

    for name in names:
        if records.split_is_complete(root / name, "test"):
            print(f"{name}: exists ({root / name})")
            continue
        print(f"{name}: {heldout_sets.build_set(name, root)} tracks -> {root / name}")


# ---------------------------------------------------------------------------------------------------------------------
# score


def _runs(sets: list[str]) -> list[tuple[str, str, float]]:
    """(row label, set folder, gain dB) for what was asked."""
    runs = []
    for name in ("multi", "piano", "timbre") + SCORE_SETS:
        if name in sets:
            runs.append((name, name, 0.0))
    if "level" in sets:
        runs += [(f"{name} {db:+.0f} dB", name, db) for name in ("multi", "piano") for db in LEVELS_DB]
    return runs


def score(args) -> dict[str, Any]:
    from benchmarks import compare_peers
    from mt3 import api

    transcriber = api.load_model(args.checkpoint, gin_bindings=getattr(args, "gin_bindings", None) or ())
    rows = []
    for label, folder, db in _runs(args.sets):
        run_args = argparse.Namespace(data_dir=args.root / folder, split="test", max_tracks=args.max_tracks,
                                      checkpoint=args.checkpoint, basic_pitch_python=args.basic_pitch_python,
                                      gain_db=db, peer=args.peer, transcriber=transcriber)
        print(f"== {label}", flush=True)
        report = compare_peers.run(run_args)
        ours, peer = report["systems"]
        rows.append({"set": label, "folder": folder, "gain_db": db, "tracks": report["data"]["tracks"],
                     "audio_seconds": report["data"]["audio_seconds"], "ours": ours["mean"], "ours_rtf": ours["rtf"],
                     "peer": peer["mean"] if args.peer else None, "peer_rtf": peer["rtf"] if args.peer else None,
                     "invalid_events": sum(t["ours"]["invalid_events"] for t in report["tracks"]),
                     "decoded_tokens": sum(t["ours"].get("decoded_tokens") or 0 for t in report["tracks"]),
                     "programs": [t["ours"]["programs"] for t in report["tracks"]],
                     "ref_programs": [t["ref_programs"] for t in report["tracks"]],
                     "per_track": [{"id": t["id"], "ref_program_set": t.get("ref_program_set"),
                                    "ours": {k: t["ours"]["metrics"].get(k) for k in TRACK_KEYS},
                                    "peer": {k: t["basic_pitch"]["metrics"].get(k) for k in TRACK_KEYS}}
                                for t in report["tracks"]],
                     "model": report["model"], "basic_pitch": report["basic_pitch"], "load": report["load"]})
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": compare_peers.machine(), "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    from benchmarks.compare_peers import _f

    rows = report["rows"]
    model = rows[0]["model"]
    m = report["machine"]
    peer = rows[0]["peer"] is not None
    bp = rows[0]["basic_pitch"].get("basic_pitch")
    zero = {r["folder"]: r["ours"].get("onset_f1") for r in rows if r["gain_db"] == 0.0}
    lines = [
        f"# Held-out sets: mt3 `{model['name']}` step {model['step']}" + (f" beside Basic Pitch {bp}" if peer else ""),
        "",
        f"Measured {report['date']} on {m['cpu']} (nproc {m['nproc']}, shared); `python -m benchmarks.heldout"
        f"{'' if peer else ' --no-peer'}`; full-track decoding, mir_eval as `mt3 eval`; onset and onset+offset F1 are "
        "instrument-agnostic on pitched notes (drums excluded); multi-instrument and drum F1 are ours only.",
        "",
        "| set | tracks | min | ours onset | ours on+off | multi-instr. | drum | ours onset / 0 dB | invalid % |"
        " programs/file ours (mean, max) | reference (mean, max) |"
        + (" Basic Pitch onset | Basic Pitch on+off |" if peer else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if peer else ""),
    ]
    for r in rows:
        o = r["ours"]
        rel = None
        if r["gain_db"] != 0.0 and zero.get(r["folder"]) and o.get("onset_f1") is not None:
            rel = o["onset_f1"] / zero[r["folder"]]
        tokens = r["decoded_tokens"]
        invalid = f"{100.0 * r['invalid_events'] / tokens:.1f}" if tokens else "—"
        cells = [r["set"], str(r["tracks"]), f"{r['audio_seconds'] / 60:.1f}", _f(o.get("onset_f1")),
                 _f(o.get("onset_offset_f1")), _f(o.get("multi_instrument_f1")), _f(o.get("drum_onset_f1")),
                 _f(rel), invalid, _programs(r.get("programs")), _programs(r.get("ref_programs"))]
        if peer:
            cells += [_f(r["peer"].get("onset_f1")), _f(r["peer"].get("onset_offset_f1"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Sets: `multi` test-split pieces as arranged, MuseScore General; `piano` the same pieces as solo "
              "piano, MuseScore General; `-20/-30 dB` those files scaled; `timbre` validation-split pieces rendered "
              "with TiMidity++ + freepats (the selection set); `plain` test-split pieces in their own score "
              "instrumentation, `piano_dense` test-split keyboard works and piano reductions of the densest scores, "
              "`performance` humanised test-split pieces (rubato, jitter, dynamics, sustain pedal), all MuseScore "
              "General (benchmarks/heldout_sets.py). Built by `python -m benchmarks.heldout --build`. Programs/file: "
              "distinct GM programs a file's notes use, drums counting as one."]
    lines += group_lines(rows)
    return "\n".join(lines) + "\n"


def _group(track: dict[str, Any]) -> str:
    """A score-set track's texture, from its id and its reference's programs."""
    programs = track.get("ref_program_set") or []
    if track["id"].endswith("#reduction"):
        return "piano reductions"
    if programs and all(p < 8 for p in programs):
        return "piano"
    if programs and all(p in (52, 53) for p in programs):
        return "voices"
    if programs and all(40 <= p <= 48 for p in programs):
        return "strings"
    return "other"


def group_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Mean per-track onset F1 by texture for the score sets (ours / Basic Pitch), as `mt3 eval` averages."""
    from benchmarks.compare_peers import _f

    lines = []
    for r in rows:
        if r["folder"] not in SCORE_SETS or not r.get("per_track"):
            continue
        parts = []
        for group in sorted({_group(t) for t in r["per_track"]}):
            ts = [t for t in r["per_track"] if _group(t) == group]
            mean = {}
            for side in ("ours", "peer"):
                vals = [t[side]["onset_f1"] for t in ts if t[side].get("onset_f1") is not None]
                mean[side] = sum(vals) / len(vals) if vals else None
            parts.append(f"{group} ({len(ts)}): {_f(mean['ours'])} / {_f(mean['peer'])}")
        lines.append(f"- `{r['set']}` onset F1 ours / Basic Pitch by texture: " + "; ".join(parts))
    return ["", *lines] if lines else []


def _programs(counts: list[int] | None) -> str:
    return f"{sum(counts) / len(counts):.1f}, {max(counts)}" if counts else "—"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true", help="build the sets (from --corpus) and exit")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="the source corpus (build-corpus output)")
    parser.add_argument("--prepared", type=Path, default=None,
                        help="its prepared records (default: data/prepared_big/local for data/corpus_big)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="where the sets live")
    parser.add_argument("--checkpoint", default=None, help="our model dir (default: the bundled model)")
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="ours only (no Basic Pitch)")
    parser.add_argument("--basic-pitch-python", default=None)
    parser.add_argument("--max-tracks", type=int, default=None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--gin", dest="gin_bindings", action="append", default=[], metavar="NAME=VALUE",
                        help="extra gin binding of our model's inference, e.g. "
                             "\"inference.InferenceConfig.decode_mask = 'note_state'\" (repeatable)")
    args = parser.parse_args(argv)
    args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = sorted(set(args.sets) - set(SETS))
    if unknown:
        parser.error(f"unknown sets {unknown}; choose from {', '.join(SETS)}")
    if args.build:
        build_score_sets([s for s in SCORE_SETS if s in args.sets], args.root)
        if set(args.sets) & set(CORPUS_SETS):
            prepared = args.prepared or (REPO / "data" / "prepared_big" / "local")
            build(args.corpus, prepared, args.root)
        return 0
    from mt3.data import records

    for _, folder, _ in _runs(args.sets):
        if not records.split_is_complete(args.root / folder, "test"):
            raise SystemExit(f"{args.root / folder}: no held-out set; run `python -m benchmarks.heldout --build` first")
    report = score(args)
    from benchmarks import compare_peers

    compare_peers.write_report(args.out, markdown(report), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
