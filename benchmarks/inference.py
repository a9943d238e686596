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

Usage: .venv/bin/python benchmarks/inference.py [--configs tiny,small] [--seconds 60] [--max-decode-len 1024]
       [--batch-sizes 1,4,16] [--uncached-len 256] [--cache-batch 4] [--json]
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

    from mt3 import rendering

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
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # child process: one config, JSON out
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    if args.only:
        print(json.dumps(run_config(args.only, args)))
        return 0
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
