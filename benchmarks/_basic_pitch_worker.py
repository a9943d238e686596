"""Basic Pitch worker for `benchmarks/compare_peers.py`; runs under Basic Pitch's own virtualenv, not the project's.

It imports only basic-pitch and the standard library (never `mt3`), loads basic-pitch's bundled ONNX model ONCE and
transcribes audio files with `basic_pitch.inference.predict` at its default thresholds, timing each `predict` call
(wall clock: reading and resampling the file, the network, note creation).

  python _basic_pitch_worker.py --check
      prints one JSON line: basic-pitch version, the ONNX model path, the backend the loaded model uses.
  python _basic_pitch_worker.py --out DIR FILE...
      transcribes the files: DIR/<stem>.mid each, DIR/timings.json ({"files": [{audio, midi, seconds, notes}]}).
  python _basic_pitch_worker.py --out DIR --serve
      reads one JSON request per stdin line ({"audio": PATH, "midi": PATH}), transcribes it and answers one JSON line
      ({"audio", "midi", "seconds", "notes"} or {"error"}) on stdout; writes DIR/timings.json at end of input.
      compare_peers.py uses this so that both systems run alternately in one benchmark run.

Everything basic-pitch prints (it announces each file on stdout) goes to stderr, so stdout carries only answers.
"""

from __future__ import annotations

import os
import sys

# benchmarks/tokenize.py would shadow the standard library's `tokenize` for a script run from this folder.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def _answers_channel():
    """A private copy of stdout for answers; fd 1 (Python's and C libraries' prints) is pointed at stderr."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    return channel


def load_onnx_model():
    """basic-pitch's bundled ICASSP 2022 model, ONNX file, loaded with onnxruntime (CPU); refuses another backend."""
    import basic_pitch
    from basic_pitch.inference import Model

    path = basic_pitch.build_icassp_2022_model_path(basic_pitch.FilenameSuffix.onnx)
    if not path.is_file():
        raise SystemExit(f"basic-pitch's ONNX model is missing: {path}")
    model = Model(path)
    if model.model_type != Model.MODEL_TYPES.ONNX:
        raise SystemExit(f"{path} loaded with backend {model.model_type}, expected ONNX")
    return model, path


def transcribe(model, audio: str, midi: str) -> dict:
    from basic_pitch.inference import predict

    start = time.perf_counter()
    _, midi_data, note_events = predict(audio, model)  # default thresholds (onset 0.5, frame 0.3, 127.7 ms, melodia)
    seconds = time.perf_counter() - start
    Path(midi).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{midi}.tmp"
    midi_data.write(tmp)
    os.replace(tmp, midi)
    return {"audio": audio, "midi": midi, "seconds": seconds, "notes": len(note_events)}


def _write_timings(out: Path, entries: list[dict]) -> None:
    tmp = out / ".timings.json.tmp"
    tmp.write_text(json.dumps({"files": entries}, indent=2) + "\n")
    os.replace(tmp, out / "timings.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    answers = _answers_channel()
    model, path = load_onnx_model()
    if args.check:
        from importlib.metadata import version

        import onnxruntime

        answers.write(json.dumps({"basic_pitch": version("basic-pitch"), "onnxruntime": onnxruntime.__version__,
                                  "model_path": str(path), "backend": str(model.model_type.name),
                                  "providers": model.model.get_providers()}) + "\n")
        return 0
    if args.out is None:
        parser.error("--out DIR is required to transcribe")
    args.out.mkdir(parents=True, exist_ok=True)
    entries = []
    if args.serve:
        answers.write(json.dumps({"ready": True, "model_path": str(path)}) + "\n")
        for line in sys.stdin:
            if not line.strip():
                continue
            request = json.loads(line)
            try:
                entry = transcribe(model, request["audio"], request["midi"])
            except Exception as err:  # answer and keep serving; the caller decides what a failure means
                entry = {"audio": request.get("audio"), "error": f"{type(err).__name__}: {err}"}
            entries.append(entry)
            answers.write(json.dumps(entry) + "\n")
    else:
        for audio in args.files:
            entry = transcribe(model, audio, str(args.out / f"{Path(audio).stem}.mid"))
            entries.append(entry)
            answers.write(json.dumps(entry) + "\n")
    _write_timings(args.out, entries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
