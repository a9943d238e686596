"""Does per-note confidence rank true notes above false ones? Precision at several thresholds on held-out audio.

    python -m benchmarks.confidence [--corpus DIR] [--split test] [--checkpoint mt3/pretrained/local_cpu]
        [--max-tracks N] [--out-md F] [--png F] [--json F]

Transcribes a Slakh-layout split (default: the test split of `mt3 build-corpus --out /tmp/h7corpus30 --minutes 30
--seed 3`, rendered with the held-out MuseScore General soundfont), matches estimated notes to the reference with
mir_eval (onset within 50 ms and the same pitch, offsets and programs ignored; drums matched to drums), and for each
confidence threshold prints the share of notes kept, their precision and the recall left. Each aggregate of a note's
onset-token probabilities (`mt3.note_confidence.AGGREGATES`: min, mean, product) is compared by average precision
(the area under its precision-recall curve over the notes) and ROC AUC (the chance that a random true note outranks
a random false one). Writes the table as Markdown and a precision/recall-vs-threshold plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

THRESHOLDS = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7)
ONSET_TOLERANCE = 0.05


def matched_flags(ref_ns, est_notes) -> tuple[np.ndarray, int]:
    """(bool per estimated note: matched to a reference note, number of reference notes); pitched and drum notes
    are matched separately (a drum's 'pitch' is a kit piece)."""
    import mir_eval

    flags = np.zeros(len(est_notes), bool)
    refs_total = 0
    for drums in (False, True):
        ref = [n for n in ref_ns.notes if bool(n.is_drum) == drums]
        idx = [i for i, n in enumerate(est_notes) if bool(n.is_drum) == drums]
        refs_total += len(ref)
        if not ref or not idx:
            continue

        def arrays(notes):
            return (np.array([[n.start_time, max(n.end_time, n.start_time + 1e-3)] for n in notes]),
                    np.array([440.0 * 2 ** ((n.pitch - 69) / 12) for n in notes]))

        (ref_iv, ref_hz), (est_iv, est_hz) = arrays(ref), arrays([est_notes[i] for i in idx])
        for _, e in mir_eval.transcription.match_notes(ref_iv, ref_hz, est_iv, est_hz,
                                                       onset_tolerance=ONSET_TOLERANCE, offset_ratio=None):
            flags[idx[e]] = True
    return flags, refs_total


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the precision-recall curve of ranking notes by `scores` (ties broken pessimistically)."""
    order = np.lexsort((truth, -scores))  # within a tie, false notes first
    hits = truth[order].astype(float)
    if hits.sum() == 0:
        return 0.0
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """P(a random true note scores above a random false one), ties counting half (Mann-Whitney U)."""
    pos, neg = scores[truth], scores[~truth]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]), kind="stable"), kind="stable").astype(float)
    # average ranks of ties
    values = np.concatenate([pos, neg])
    for v in np.unique(values):
        same = values == v
        ranks[same] = ranks[same].mean()
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) - 1) / 2) / (len(pos) * len(neg)))


def run(args) -> dict:
    from benchmarks.instrument_consistency import load_split
    from mt3 import model_loading, note_confidence

    tracks = load_split(Path(args.corpus), args.split, args.max_tracks, 0)
    im = model_loading.load_inference_model(args.checkpoint)
    started = time.perf_counter()
    results = im.transcribe_many([audio for _, audio, _ in tracks], progress=False)
    wall = time.perf_counter() - started
    seconds = sum(r.audio_seconds for r in results)
    parts, truth, refs_total, unknown = [], [], 0, 0
    for (_, _, ref), result in zip(tracks, results, strict=True):
        notes = list(result.ns.notes)
        flags, n_ref = matched_flags(ref, notes)
        refs_total += n_ref
        for note, flag in zip(notes, flags, strict=True):
            lp = result.confidence.log_probs.get(note_confidence.note_key(note)) if result.confidence else None
            if lp is None:
                unknown += 1
                continue
            parts.append(lp)
            truth.append(flag)
    truth_arr = np.array(truth, bool)
    scores = {how: np.array([note_confidence.aggregate(p, how) for p in parts]) for how in note_confidence.AGGREGATES}
    rows = []
    for threshold in THRESHOLDS:
        keep = scores[note_confidence.DEFAULT_AGGREGATE] >= threshold
        kept = int(keep.sum())
        rows.append({"threshold": threshold, "notes_kept": kept, "share_kept": kept / max(len(truth_arr), 1),
                     "precision": float(truth_arr[keep].mean()) if kept else None,
                     "recall": float(truth_arr[keep].sum() / max(refs_total, 1))})
    ranking = {how: {"average_precision": average_precision(s, truth_arr), "roc_auc": roc_auc(s, truth_arr)}
               for how, s in scores.items()}
    report = {"corpus": str(args.corpus), "split": args.split, "tracks": len(tracks),
              "audio_seconds": round(seconds, 1), "checkpoint": str(args.checkpoint), "notes": len(truth_arr),
              "true_notes": int(truth_arr.sum()),
              "reference_notes": refs_total, "notes_without_confidence": unknown, "decode_wall_seconds": round(wall, 1),
              "thresholds": rows, "ranking": ranking,
              "base_rate": float(truth_arr.mean()) if len(truth_arr) else None}
    if args.png:
        plot(scores, truth_arr, refs_total, Path(args.png))
    return report


def plot(scores: dict, truth: np.ndarray, refs_total: int, path: Path) -> None:
    from mt3 import plotting

    grid = np.linspace(0.0, 0.7, 71)
    curves = {}
    for how, s in scores.items():
        curves[f"precision ({how})"] = [float(truth[s >= t].mean()) if (s >= t).any() else None for t in grid]
        curves[f"recall ({how})"] = [float(truth[s >= t].sum() / max(refs_total, 1)) for t in grid]
    fig = plotting.metric_curves_figure([round(float(t), 2) for t in grid], curves,
                                        title="note confidence threshold: precision and recall", ylabel="score")
    ax = fig.axes[0]
    ax.set_xlabel("confidence threshold (--min-confidence)")
    for line in ax.get_lines():
        line.set_marker("")
        line.set_linestyle("-" if "min" in line.get_label() else "--" if "mean" in line.get_label() else ":")
    ax.legend(loc="best", fontsize="small")
    plotting._save(fig, path)


def markdown(report: dict) -> str:
    lines = [f"Bundled model `{report['checkpoint']}` on {report['tracks']} tracks ({report['audio_seconds']} s) of "
             f"`{report['corpus']}` ({report['split']} split): {report['notes']} estimated notes, "
             f"{report['true_notes']} of them true (onset within 50 ms and pitch; precision with no threshold "
             f"{report['base_rate']:.3f}), {report['reference_notes']} reference notes.", "",
             "| --min-confidence | notes kept | share kept | precision | recall |", "|---:|---:|---:|---:|---:|"]
    for r in report["thresholds"]:
        precision = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        lines.append(f"| {r['threshold']:g} | {r['notes_kept']} | {r['share_kept']:.3f} | {precision} | "
                     f"{r['recall']:.3f} |")
    lines += ["", "| aggregate of a note's token probabilities | average precision | ROC AUC |", "|---|---:|---:|"]
    for how, r in report["ranking"].items():
        lines.append(f"| {how} | {r['average_precision']:.3f} | {r['roc_auc']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="/tmp/h7corpus30")
    parser.add_argument("--split", default="test")
    parser.add_argument("--checkpoint", default="mt3/pretrained/local_cpu")
    parser.add_argument("--max-tracks", type=int, default=None)
    parser.add_argument("--out-md", default=None)
    parser.add_argument("--png", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    report = run(args)
    table = markdown(report)
    print(table)
    if args.out_md:
        Path(args.out_md).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
