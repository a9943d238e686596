"""Benchmark: instrument-consistency options (`mt3.program_consistency`) on multi-instrument renders.

For one model (a model dir: MT3's imported checkpoint, or the bundled model when --checkpoint is omitted) and the
multi-instrument tracks (>= --min-programs pitched programs) of a Slakh-layout split (default: the local corpus's
test split, rendered with the held-out MuseScore General soundfont), it decodes each track
  baseline   MT3's behaviour: every segment on its own;
  two-pass   pass 2 restricted to the programs holding >= --min-share of pass 1's pitched notes;
  oracle     `--programs` given the reference's own programs (what a user who knows the band would pass);
and derives the post-hoc variants (family / dominant reassignment) from the baseline and two-pass notes. Per
variant: onset F1 (instrument-agnostic), multi-instrument F1 (full programs and MIDI class), and MR-MT3's leakage
figures (programs per reference instrument, share of its notes in its main program, distinct programs estimated
vs reference). Writes a markdown table (stdout and --out-md), the JSON, and before/after piano rolls (--png-dir).

Usage: .venv/bin/python -m benchmarks.instrument_consistency [--checkpoint models/mt3] [--corpus data/corpus]
       [--split test] [--max-tracks N] [--min-programs 2] [--min-share 0.05] [--out-md F] [--json F] [--png-dir D]
MT3's checkpoint: `fetch github:ojas-chaturvedi/submission-test` (folder checkpoints/mt3/), then
`mt3 import-checkpoint checkpoints/mt3 --preset mt3 -o models/mt3` (README, "Use MT3's released models").
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

METRICS = (("onset_f1", "onset F1"), ("multi_instrument_f1", "multi-instr. F1"),
           ("multi_instrument_f1_midi_class", "multi-instr. F1 (MIDI class)"))
LEAKAGE = (("programs_per_instrument", "programs per ref. instrument"), ("main_program_share", "main-program share"),
           ("est_programs", "est. programs"), ("ref_programs", "ref. programs"))


def load_split(corpus: Path, split: str, max_tracks: int | None, min_programs: int):
    """(id, audio, reference) of the split's tracks whose reference has >= min_programs pitched programs; `corpus` is
    a Slakh-layout corpus or a folder of prepared records (the held-out sets of `benchmarks.heldout`)."""
    from mt3 import program_consistency
    from mt3.converters import slakh

    if (corpus / f"{split}.manifest.json").exists():  # prepared records (e.g. benchmarks.heldout's sets)
        from mt3.data import records as rec_io

        records = list(rec_io.read_records(rec_io.shard_paths(corpus, split)))
    else:  # a Slakh-layout corpus (build-corpus output)
        records = [slakh.load_track(t)[0] for t in slakh.list_tracks(corpus)[split]]
    records = [r for r in records if len(program_consistency.program_note_counts(r.sequence)) >= min_programs]
    return [(r.id, r.audio, r.sequence) for r in records[:max_tracks]]


def score(refs, results) -> dict:
    from mt3 import metrics, program_consistency

    scores = metrics.transcription_metrics([(ref, r.ns) for ref, r in zip(refs, results, strict=True)])
    out = {key: scores.get(key) for key, _ in METRICS}
    out.update(program_consistency.mean_leakage(
        [program_consistency.leakage_figures(ref, r.ns) for ref, r in zip(refs, results, strict=True)]))
    return out


def run(args) -> dict:
    import copy

    import numpy as np

    from mt3 import model_loading, pretrained, program_consistency

    checkpoint = args.checkpoint or pretrained.default_model_dir()
    started = time.perf_counter()
    im = model_loading.load_inference_model(checkpoint, batch_size=args.batch_size)
    load_s = time.perf_counter() - started
    tracks = load_split(Path(args.corpus), args.split, args.max_tracks, args.min_programs)
    ids, audios, refs = zip(*tracks, strict=True)
    segmented = [im.segment_audio(a) for a in audios]
    counts = [len(s.frames) for s in segmented]
    frames = [f for s in segmented for f in s.frames]
    seconds = sum(s.audio_seconds for s in segmented)
    timings, results = {}, {}

    def decode(name, sets):
        t = time.perf_counter()
        results[name] = im._decode_and_stitch(segmented, counts, frames, sets, True, name)
        timings[name] = round(time.perf_counter() - t, 1)
        if args.save_notes:  # after every pass: serialized NoteSequences, to rescore without decoding again
            import pickle

            with open(args.save_notes, "wb") as f:
                pickle.dump({"ids": ids, "refs": [r.SerializeToString() for r in refs], "sets": sets_seen,
                             "variants": {k: [r.ns.SerializeToString() for r in v] for k, v in results.items()}}, f)

    sets_seen: dict[str, list] = {}

    decode("baseline", None)
    sets = [program_consistency.estimate_program_set(r.ns, args.min_share) for r in results["baseline"]]
    sets_seen["two-pass"] = sets
    decode("two-pass", sets)
    decode("oracle --programs", [tuple(sorted(program_consistency.program_note_counts(ref))) for ref in refs])
    for base in ("baseline", "two-pass"):
        for mode in ("family", "dominant"):
            derived = [copy.copy(r) for r in results[base]]
            for r in derived:
                r.ns = program_consistency.reassign_programs(r.ns, mode)
            results[f"{base} + {mode}"] = derived
    table = {name: score(refs, res) for name, res in results.items()}
    if args.png_dir:
        from mt3 import plotting

        best = int(np.argmax([len(program_consistency.program_note_counts(r)) for r in refs]))
        out = Path(args.png_dir)
        for name in ("baseline", "two-pass", "two-pass + family"):
            plotting.plot_reference_vs_estimate(refs[best], results[name][best].ns,
                                                out / f"{args.label}_{name.replace(' + ', '_')}.png",
                                                title=f"{ids[best]}: {args.label}, {name}")
    return {"model": str(checkpoint), "label": args.label, "tracks": len(refs), "audio_s": round(seconds, 1),
            "load_s": round(load_s, 1), "decode_s": timings, "min_share": args.min_share,
            "sets": {i: list(s) for i, s in zip(ids, sets, strict=True)}, "scores": table}


def markdown(res: dict) -> str:
    head = "| variant | " + " | ".join(t for _, t in METRICS + LEAKAGE) + " |"
    lines = [f"{res['label']}: {res['tracks']} tracks, {res['audio_s']} s ({res['model']})", "", head,
             "|---|" + "---:|" * (len(METRICS) + len(LEAKAGE))]
    for name, s in res["scores"].items():
        cells = [("n/a" if s[k] is None else f"{s[k]:.3f}") for k, _ in METRICS]
        cells += [("n/a" if s[k] is None else f"{s[k]:.2f}") for k, _ in LEAKAGE]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("decode seconds: " + ", ".join(f"{k} {v}" for k, v in res["decode_s"].items()))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="model dir (default: the bundled model)")
    parser.add_argument("--label", default=None, help="name in the table (default: the model dir's name)")
    parser.add_argument("--corpus", default="data/corpus",
                        help="a Slakh-layout corpus, or a folder of prepared records (data/heldout/plain)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-tracks", type=int, default=None)
    parser.add_argument("--min-programs", type=int, default=2,
                        help="tracks whose reference has at least this many pitched programs (2: multi-instrument)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--min-share", type=float, default=0.05)
    parser.add_argument("--out-md", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--png-dir", default=None)
    parser.add_argument("--save-notes", default=None, help="pickle of every variant's NoteSequences")
    args = parser.parse_args()
    args.label = args.label or Path(args.checkpoint or "bundled").name
    res = run(args)
    text = markdown(res)
    print(text)
    for path, body in ((args.out_md, text + "\n"), (args.json, json.dumps(res, indent=1))):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
