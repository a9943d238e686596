"""Benchmark: transcription speed of `mt3.inference` on this machine (random-init weights: speed does not depend on
what the weights learned, only on how many tokens are decoded).

Audio: the music21 Bach chorale bwv66.6 (flute, clarinet, bassoon, bass) rendered with fluidsynth and tiled to
`--seconds` (60 s by default). For each model config (tiny = gin/model_tiny.gin, small = MT3's gin/model_small.gin):

  RTF        wall seconds / audio seconds for the whole file (segments -> batched KV-cached decoding -> stitching),
             measured after a warm-up batch (the one-off jit compile is reported separately)
  tokens/s   decoded target tokens per wall second (a random model never emits EOS, so every segment decodes
             --max-decode-len tokens: the worst case; a trained model stops after ~100-300 tokens per segment)
  batch      RTF and tokens/s for batch sizes 1, 4, 16 (--batch-sizes)
  cache      cached vs uncached decoding of one batch (`decoding.decode` vs `decoding.decode_uncached`) at
             --uncached-len tokens: the KV cache's speed-up
  peak RSS   resource.getrusage(RUSAGE_SELF).ru_maxrss of a fresh process per config

MT3-size case (--mt3-size): MT3's network decoding the same audio with today's fixed-shape loop ("before": every row
and a max-decode-length KV cache every step) and with the compacting decoder ("after": finished rows dropped, cache
grown on demand), each in a fresh process: RTF with and without compile time, tokens/s, load and compile seconds,
peak RSS, and whether the greedy tokens are identical. --mt3-checkpoint DIR uses MT3's imported weights (`fetch
github:ojas-chaturvedi/submission-test`, folder checkpoints/mt3/, then `mt3 import-checkpoint checkpoints/mt3
--preset mt3 -o models/mt3`); without it, random weights of the same shape (which never emit EOS: the worst case).

Usage: .venv/bin/python benchmarks/inference.py [--configs tiny,small] [--seconds 60] [--max-decode-len 1024]
       [--batch-sizes 1,4,16] [--uncached-len 256] [--cache-batch 4] [--json]
       .venv/bin/python -m benchmarks.inference --mt3-size [--mt3-checkpoint models/mt3] [--seconds 60]
           [--save-tokens before.npz | --check-tokens before.npz]

Token check across code versions (issue 29): run the MT3-size case with --save-tokens on the old code, then with
--check-tokens on the new one; it prints whether every segment's greedy tokens are equal and exits 1 if not.
"""

from __future__ import annotations

import os
import sys

# benchmarks/tokenize.py would shadow the standard library's `tokenize` for a script run from this folder.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

CONFIGS = {  # the values of gin/model_tiny.gin and gin/model_small.gin (dropout off: inference)
    "tiny": dict(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256, num_encoder_layers=2, num_decoder_layers=2),
    "small": dict(emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024, num_encoder_layers=8, num_decoder_layers=8),
}


def chorale_audio(seconds: float) -> np.ndarray:
    """The Bach chorale on four GM programs, rendered with fluidsynth (FluidR3 GM), tiled to `seconds`."""
    import music21
    import pretty_midi

    from mt3.corpus import rendering

    score = music21.corpus.parse("bach/bwv66.6")
    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    for part, program in zip(score.parts, (73, 71, 70, 32), strict=False):
        inst = pretty_midi.Instrument(program=program)
        for n in part.flatten().notes:
            start = float(n.getOffsetInHierarchy(score)) * 0.5
            for p in (n.pitches if n.isChord else [n.pitch]):
                inst.notes.append(pretty_midi.Note(80, p.midi, start, start + float(n.quarterLength) * 0.5))
        pm.instruments.append(inst)
    with tempfile.TemporaryDirectory() as tmp:
        pm.write(os.path.join(tmp, "chorale.mid"))
        rendering.run_fluidsynth(os.path.join(tmp, "chorale.mid"), rendering.soundfont_path("FluidR3_GM.sf2"),
                                 os.path.join(tmp, "chorale.wav"))
        from mt3.audio import load_audio

        one = load_audio(os.path.join(tmp, "chorale.wav"))
    reps = int(np.ceil(seconds * 16000 / len(one)))
    return np.tile(one, reps)[: int(seconds * 16000)]


def build(name: str, batch_size: int, max_decode_len: int):
    import jax

    from mt3 import inference
    from mt3.models import models, network

    config = network.T5Config(vocab_size=1536, dropout_rate=0.0, **CONFIGS[name])
    model = models.ContinuousInputsEncoderDecoderModel(network.Transformer(config))
    params = jax.jit(model.init_params)(jax.random.PRNGKey(0))
    return inference.InferenceModel(model, params, config=inference.InferenceConfig(
        batch_size=batch_size, max_decode_len=max_decode_len))


def run_config(name: str, args) -> dict:
    """One config in this process: RTF per batch size, cached vs uncached, peak RSS."""
    import jax

    from mt3.models import decoding

    audio = chorale_audio(args.seconds)
    rows = []
    im = None
    for batch_size in args.batch_sizes:
        im = build(name, batch_size, args.max_decode_len)
        segments = im.segment_audio(audio)
        started = time.perf_counter()
        im.predict_batch(segments.frames[:batch_size])  # compile + one batch
        compile_s = time.perf_counter() - started
        started = time.perf_counter()
        result = im.transcribe(audio)
        wall = time.perf_counter() - started
        steps = result.num_segments * args.max_decode_len  # rows decode until EOS or max length
        rows.append({"config": name, "batch": batch_size, "segments": result.num_segments,
                     "audio_s": round(result.audio_seconds, 2), "wall_s": round(wall, 2),
                     "rtf": round(wall / result.audio_seconds, 3), "tokens_per_s": round(steps / wall, 1),
                     "tokens_before_eos": result.decoded_tokens, "first_batch_s": round(compile_s, 2)})
        print(f"  {name} batch {batch_size}: RTF {rows[-1]['rtf']}", file=sys.stderr, flush=True)
    # cached vs uncached: one batch of --cache-batch segments, both compiled first
    frames = np.asarray(im.segment_audio(audio).frames[: args.cache_batch])
    module, params, length = im.model.module, im.params, args.uncached_len
    timings = {}
    for label, fn in (("cached", decoding.decode), ("uncached", decoding.decode_uncached)):
        jax.block_until_ready(fn(module, params, frames, max_decode_len=length))
        started = time.perf_counter()
        out = jax.block_until_ready(fn(module, params, frames, max_decode_len=length))
        timings[label] = time.perf_counter() - started
        timings[f"{label}_ids"] = np.asarray(out)
    cache = {"config": name, "batch": len(frames), "decode_len": length,
             "cached_s": round(timings["cached"], 3), "uncached_s": round(timings["uncached"], 3),
             "speedup": round(timings["uncached"] / timings["cached"], 1),
             "identical": bool(np.array_equal(timings["cached_ids"], timings["uncached_ids"]))}
    from mt3.models import models

    return {"rows": rows, "cache": cache, "params": models.count_params(im.params),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def run_mt3_size(mode: str, args) -> dict:
    """One decoder ("fixed" = before, "compact" = after) of the MT3-size model on the chorale, in this process."""
    import dataclasses

    from mt3 import model_loading
    from mt3.training import compilation

    audio = chorale_audio(args.seconds)
    started = time.perf_counter()
    if args.mt3_checkpoint:
        im = model_loading.load_inference_model(args.mt3_checkpoint, batch_size=args.mt3_batch)
        im.config = dataclasses.replace(im.config, compact_decoding=mode == "compact")
    else:
        im = build("small", args.mt3_batch, args.max_decode_len)
        im.config = dataclasses.replace(im.config, compact_decoding=mode == "compact")
    load_s = time.perf_counter() - started
    compiled, started = compilation.compile_seconds(), time.perf_counter()
    segments = im.segment_audio(audio)
    tokens = im.decode_segments(list(segments.frames))
    result = im.stitch(tokens, segments.start_times, segments.audio_seconds)
    wall = time.perf_counter() - started
    compile_s = compilation.compile_seconds() - compiled
    np.savez(args.tokens_out, *tokens)
    return {"mode": mode, "weights": args.mt3_checkpoint or "random",
            "step_runtime": im.decoder_runtime if mode == "compact" else "xla",
            "audio_s": round(result.audio_seconds, 1),
            "segments": result.num_segments, "tokens": result.decoded_tokens, "notes": len(result.ns.notes),
            "load_s": round(load_s, 1), "compile_s": round(compile_s, 1), "wall_s": round(wall, 1),
            "rtf": round(wall / result.audio_seconds, 3),
            "rtf_no_compile": round((wall - compile_s) / result.audio_seconds, 3),
            "tokens_per_s": round(result.decoded_tokens / max(wall - compile_s, 1e-9), 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def mt3_size_case(args) -> list[dict]:
    """Before and after, each in a fresh process (peak RSS is per process); tokens compared here."""
    rows, tokens = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("fixed", "compact"):
            print(f"benchmarking MT3-size, {mode} decoder ...", file=sys.stderr, flush=True)
            out = os.path.join(tmp, f"{mode}.npz")
            cmd = [sys.executable, os.path.abspath(__file__), "--only-mt3", mode, "--seconds", str(args.seconds),
                   "--max-decode-len", str(args.max_decode_len), "--mt3-batch", str(args.mt3_batch),
                   "--tokens-out", out] + (["--mt3-checkpoint", args.mt3_checkpoint] if args.mt3_checkpoint else [])
            child = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
            with np.load(out) as z:
                tokens[mode] = [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]
    same = _same_tokens(tokens["fixed"], tokens["compact"])
    if args.save_tokens:
        np.savez(args.save_tokens, *tokens["compact"])
    saved = None
    if args.check_tokens:
        with np.load(args.check_tokens) as z:
            saved = [z[k] for k in sorted(z.files, key=lambda k: int(k.split("_")[1]))]
    for row in rows:
        row["identical_tokens"] = same
        if saved is not None:
            row["same_as_saved"] = _same_tokens(saved, tokens[row["mode"]])
    head = f"{'decoder (step runtime)':<22}{'weights':>9}{'audio s':>9}{'tokens':>8}{'load s':>8}{'compile s':>11}" \
           f"{'wall s':>8}{'RTF':>7}{'RTF-cmp':>9}{'tok/s':>8}{'peak RSS MB':>13}{'same ids':>10}"
    print(f"\nMT3-size decoding, batch {args.mt3_batch}, {os.cpu_count()} CPU cores (RTF-cmp: without compile)\n")
    print(head)
    print("-" * len(head))
    for r in rows:
        weights = "MT3" if r["weights"] != "random" else "random"
        mode = f"{r['mode']} ({r.get('step_runtime', 'xla')})"
        print(f"{mode:<22}{weights:>9}{r['audio_s']:>9}{r['tokens']:>8}{r['load_s']:>8}{r['compile_s']:>11}"
              f"{r['wall_s']:>8}{r['rtf']:>7}{r['rtf_no_compile']:>9}{r['tokens_per_s']:>8}{r['peak_rss_mb']:>13}"
              f"{str(r['identical_tokens']):>10}")
    if saved is not None:
        verdicts = ", ".join(f"{r['mode']} {'equal' if r['same_as_saved'] else 'DIFFERENT'}" for r in rows)
        print(f"\n--check-tokens {args.check_tokens}: {verdicts}")
    return rows


def _same_tokens(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def print_tables(results: list[dict], args) -> None:
    print(f"\nmt3 inference benchmark: {args.seconds:g} s of audio, max decode length {args.max_decode_len}, "
          f"random-init weights (every segment decodes the maximum), {os.cpu_count()} CPU cores\n")
    head = f"{'config':<7}{'params':>12}{'batch':>7}{'segs':>6}{'wall s':>9}{'RTF':>8}{'tokens/s':>10}" \
           f"{'1st batch s':>13}{'peak RSS MB':>13}"
    print(head)
    print("-" * len(head))
    for res in results:
        for row in res["rows"]:
            print(f"{row['config']:<7}{res['params']:>12,}{row['batch']:>7}{row['segments']:>6}{row['wall_s']:>9}"
                  f"{row['rtf']:>8}{row['tokens_per_s']:>10}{row['first_batch_s']:>13}{res['peak_rss_mb']:>13}")
    print(f"\n{'config':<7}{'batch':>7}{'tokens':>8}{'cached s':>10}{'uncached s':>12}{'speed-up':>10}{'same ids':>10}")
    for res in results:
        c = res["cache"]
        print(f"{c['config']:<7}{c['batch']:>7}{c['decode_len']:>8}{c['cached_s']:>10}{c['uncached_s']:>12}"
              f"{c['speedup']:>9}x{str(c['identical']):>10}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-decode-len", type=int, default=1024)
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--uncached-len", type=int, default=256, help="tokens decoded in the cache comparison")
    parser.add_argument("--cache-batch", type=int, default=4, help="segments in the cache comparison batch")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--mt3-size", action="store_true", help="only the MT3-size before/after case")
    parser.add_argument("--mt3-checkpoint", default=None, help="MT3's imported model dir (default: random weights)")
    parser.add_argument("--mt3-batch", type=int, default=32, help="batch of the MT3-size case (MT3's infer batch)")
    parser.add_argument("--save-tokens", default=None, metavar="NPZ",
                        help="MT3-size case: write the decoded tokens (one array per segment) to NPZ")
    parser.add_argument("--check-tokens", default=None, metavar="NPZ",
                        help="MT3-size case: compare both decoders' tokens with NPZ from an earlier --save-tokens "
                             "(e.g. written by the code before a speed change); exit 1 when any token differs")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # child process: one config, JSON out
    parser.add_argument("--only-mt3", default=None, help=argparse.SUPPRESS)  # child: one MT3-size decoder
    parser.add_argument("--tokens-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    if args.only:
        print(json.dumps(run_config(args.only, args)))
        return 0
    if args.only_mt3:
        print(json.dumps(run_mt3_size(args.only_mt3, args)))
        return 0
    if args.mt3_size:
        rows = mt3_size_case(args)
        if args.json:
            print(json.dumps(rows, indent=1))
        return 1 if any(r.get("same_as_saved") is False for r in rows) else 0
    results = []
    for name in args.configs.split(","):
        if name not in CONFIGS:
            parser.error(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
        print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--only", name, "--seconds",
                                str(args.seconds), "--max-decode-len", str(args.max_decode_len), "--batch-sizes",
                                ",".join(map(str, args.batch_sizes)), "--uncached-len", str(args.uncached_len),
                                "--cache-batch", str(args.cache_batch)],
                               stdout=subprocess.PIPE, text=True, check=True)
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    print_tables(results, args)
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
