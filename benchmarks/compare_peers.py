"""Benchmark: our model vs Basic Pitch (Spotify's basic-pitch, ICASSP 2022) on the same local test audio.

Audio and references are exactly what `mt3 eval` uses: the records of a prepared split (default: the `test` split of
`data/prepared/local`, the quickstart corpus), read with `mt3.data.records.read_records`. Each record's audio (16 kHz
mono
float32) is written bit-exactly to a float WAV in a temporary folder and BOTH systems transcribe that file: ours with
`Transcriber.transcribe(path)` (it hears the record's samples unchanged), Basic Pitch with
`basic_pitch.inference.predict(path)` (it resamples to 22,050 Hz itself), at its default thresholds, with its bundled
ONNX model on onnxruntime's CPU provider (no network needed).

Metrics are `mt3.metrics` (mir_eval), the code `mt3 eval` scores with, and are averaged as `mt3 eval` averages: the mean
over tracks of each per-track score, skipping tracks where a score is undefined (`metrics.transcription_metrics`).
References get `metrics.prepare_reference`; our estimate is scored as the MIDI we write (`midi_io.midi_round_trip`, as
`mt3 eval`), Basic Pitch's as the MIDI file it writes, read like `mt3 score` reads an estimate. Instrument-agnostic
onset and onset+offset F1 are on pitched notes only (drum notes are removed from the reference and the estimate): Basic
Pitch has no drums and no instruments, so multi-instrument F1 and drum F1 (on the full reference) are for ours only.

RTF (wall-clock transcription seconds / audio seconds, summed over tracks) is measured in one run, alternating per
track (ours, then Basic Pitch, then the next track), with both models loaded and each warmed up once on the first
track beforehand, so loading and JIT compilation are excluded. Ours: reading the file, log-mel, batched decoding,
stitching. Basic Pitch: `predict` (reading + resampling, the network, note creation), timed inside its worker.
Both share this machine's cores with whatever else runs; the 1-minute load average and the busiest other processes
are recorded before and after.

Basic Pitch runs in its own virtualenv (default `.venv-basic-pitch`, created with the pip commands in
`BASIC_PITCH_PIP` when missing) through `benchmarks/_basic_pitch_worker.py`, a persistent subprocess that loads the
model once and answers one transcription request per line.

Usage: .venv/bin/python -m benchmarks.compare_peers [--checkpoint DIR] [--max-tracks N] [--out FILE.md]
       [--basic-pitch-python PATH] [--data-dir DIR] [--split test] [--gin BINDING]
Writes FILE.md (the table) and FILE.json (per-track numbers), atomically; prints the table.
"""

from __future__ import annotations

import os
import sys

# benchmarks/tokenize.py would shadow the standard library's `tokenize` for a script run from this folder.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from itertools import islice  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_basic_pitch_worker.py"
DEFAULT_VENV = REPO / ".venv-basic-pitch"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "compare_peers.md"
BASIC_PITCH_PIP = (  # issue #11: basic-pitch without its TensorFlow pins; it then runs its bundled ONNX model
    ["install", "onnxruntime", "librosa", "mir_eval", "pretty_midi", "resampy<0.4.3", "scikit-learn", "scipy",
     "typing-extensions", "soundfile"],
    ["install", "--no-deps", "basic-pitch"],
)
METRICS = (  # (column, transcription_metrics key, for Basic Pitch too)
    ("onset F1", "onset_f1", True),
    ("onset+offset F1", "onset_offset_f1", True),
    ("multi-instrument F1", "multi_instrument_f1", False),
    ("drum F1", "drum_onset_f1", False),
)


# ---------------------------------------------------------------------------------------------------------------------
# the machine


def machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": cpu, "hostname": os.uname().nodename}


def _cpu_ticks() -> dict[int, tuple[str, int]]:
    ticks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        ticks[int(entry.name)] = (cmd or f"[{name}]", int(rest[11]) + int(rest[12]))  # utime + stime
    return ticks


def busiest_processes(seconds: float = 2.0, top: int = 4) -> list[str]:
    """Other processes by CPU use over `seconds` (sampled from /proc): 'NN% command...'."""
    own = {os.getpid(), os.getppid()}
    before = _cpu_ticks()
    time.sleep(seconds)
    after = _cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    use = []
    for pid, (cmd, ticks) in after.items():
        if pid in own or pid not in before:
            continue
        percent = 100.0 * (ticks - before[pid][1]) / hz / seconds
        if percent >= 5:
            use.append((percent, cmd))
    use.sort(reverse=True)
    return [f"{p:.0f}% {c[:60]}" for p, c in use[:top]]


def load_snapshot() -> dict[str, Any]:
    return {"loadavg_1min": round(os.getloadavg()[0], 2), "busiest": busiest_processes()}


# ---------------------------------------------------------------------------------------------------------------------
# Basic Pitch


def ensure_basic_pitch_python(explicit: str | None) -> Path:
    """The interpreter of Basic Pitch's virtualenv; creates `.venv-basic-pitch` with BASIC_PITCH_PIP when missing."""
    if explicit:
        python = Path(explicit)
        if not python.is_file():
            raise SystemExit(f"--basic-pitch-python {explicit}: no such interpreter")
        return python
    python = DEFAULT_VENV / "bin" / "python"
    if python.is_file():
        return python
    print(f"creating Basic Pitch's virtualenv {DEFAULT_VENV} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(DEFAULT_VENV)], check=True)
    for args in BASIC_PITCH_PIP:
        subprocess.run([str(DEFAULT_VENV / "bin" / "pip"), *args], check=True)
    return python


def check_basic_pitch(python: Path) -> dict[str, Any]:
    proc = subprocess.run([str(python), str(WORKER), "--check"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"Basic Pitch check failed with {python}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class BasicPitchWorker:
    """The persistent worker (`_basic_pitch_worker.py --serve`): one request line in, one answer line out."""

    def __init__(self, python: Path, out_dir: Path):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = out_dir / "basic_pitch_worker.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([str(python), str(WORKER), "--serve", "--out", str(out_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     bufsize=1)
        self._read()  # {"ready": true}: the model is loaded

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise SystemExit(f"the Basic Pitch worker exited ({self.proc.returncode}):\n{self._log_tail()}")
        answer = json.loads(line)
        if "error" in answer:
            raise SystemExit(f"Basic Pitch failed on {answer.get('audio')}: {answer['error']}\n{self._log_tail()}")
        return answer

    def _log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-2000:]

    def transcribe(self, audio: Path, midi: Path) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({"audio": str(audio), "midi": str(midi)}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# ---------------------------------------------------------------------------------------------------------------------
# our model


def model_facts(transcriber) -> dict[str, Any]:
    from mt3 import pretrained

    info = transcriber.info
    model_dir = Path(info["model_dir"])
    name = model_dir.name
    if pretrained.is_bundled_model(model_dir):
        meta = json.loads((model_dir / pretrained.INFO_FILE).read_text())
        name = meta.get("name", name)
    return {"name": name, "step": info.get("step"), "model_dir": str(model_dir), "num_params": info.get("num_params"),
            "batch_size": info.get("batch_size"), "emb_dim": info.get("emb_dim"),
            "layers": f"{info.get('num_encoder_layers')}+{info.get('num_decoder_layers')}",
            "decoder_runtime": transcriber.inference_model.decoder_runtime}


# ---------------------------------------------------------------------------------------------------------------------
# run


def program_count(ns) -> int:
    """Instruments a transcription names: distinct GM programs of pitched notes, plus one if it has drum notes (a MIDI
    player needs one channel program per entry; issue 27 compares ours with the reference's per file)."""
    return len({-1 if n.is_drum else int(n.program) for n in ns.notes})


def _f(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def markdown(report: dict[str, Any]) -> str:
    m, model, bp = report["machine"], report["model"], report["basic_pitch"]
    data = report["data"]
    lines = [
        f"# Our model vs Basic Pitch on {data['tracks']} `{data['split']}` tracks of `{data['data_dir']}`",
        "",
        f"Measured {report['date']} on {m['cpu']} (nproc {m['nproc']}, shared); our model `{model['name']}` step "
        f"{model['step']} ({model['num_params']:,} parameters, `{model['model_dir']}`); Basic Pitch "
        f"{bp['basic_pitch']} (ONNX, onnxruntime {bp['onnxruntime']}, CPU); {data['tracks']} tracks, "
        f"{data['audio_seconds'] / 60:.1f} min of audio.",
        "",
        "| system | onset F1 | onset+offset F1 | multi-instrument F1 | drum F1 | RTF |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for system in report["systems"]:
        cells = [_f(system["mean"].get(key)) if both or system["id"] == "ours" else "n/a"
                 for _, key, both in METRICS]
        lines.append(f"| {system['label']} | {' | '.join(cells)} | {system['rtf']:.3f} |")
    before, after = report["load"]["before"], report["load"]["after"]

    def busiest(snapshot) -> str:
        return ", ".join(f"`{b}`" for b in snapshot["busiest"]) or "none above 5 %"
    lines += [
        "",
        "- Audio: each prepared record's 16 kHz mono float32 samples (exactly what `mt3 eval` transcribes), written "
        "bit-exactly to a float WAV that both systems read; Basic Pitch resamples it to 22,050 Hz itself.",
        "- Metrics: `mt3.metrics` (mir_eval), as `mt3 eval`; mean over tracks of per-track scores (tracks where a "
        "score is undefined are skipped), as `mt3 eval` averages. Onset and onset+offset F1 are instrument-agnostic "
        "and on pitched notes only: drum notes are excluded from the reference (and the estimate). Basic Pitch "
        "outputs neither drums nor instruments, so multi-instrument F1 (program-aware onset+offset, full reference) "
        "and drum F1 are ours only.",
        "- Basic Pitch at its default thresholds (onset 0.5, frame 0.3, minimum note 127.7 ms, melodia trick), its "
        "bundled ICASSP 2022 model as ONNX (no TensorFlow, offline).",
        f"- RTF: wall-clock transcription seconds / audio seconds summed over tracks, both systems in one run, "
        f"alternating per track, each loaded and warmed up on the first track first (load and compile time "
        f"excluded; warm-up: ours {report['warmup_seconds']['ours']:.1f} s, Basic Pitch "
        f"{report['warmup_seconds']['basic_pitch']:.1f} s). Ours: `Transcriber.transcribe(path)` (decoding batch "
        f"{model['batch_size']}, decoder step in {model.get('decoder_runtime', 'xla')}); Basic Pitch: "
        f"`predict(path)`. Cores shared: 1-min load average "
        f"{before['loadavg_1min']} before, {after['loadavg_1min']} after; other processes by CPU use over 2 s "
        f"before: {busiest(before)}; after: {busiest(after)}.",
        "",
        "Per track (F1: onset / onset+offset; ours also multi-instrument / drum):",
        "",
        "| track | seconds | ours F1 | ours RTF | Basic Pitch F1 | Basic Pitch RTF |",
        "|---|---:|---|---:|---|---:|",
    ]
    for track in report["tracks"]:
        ours, bpt = track["ours"], track["basic_pitch"]
        ours_f1 = " / ".join(_f(ours["metrics"].get(k)) for _, k, _ in METRICS)
        bp_f1 = " / ".join(_f(bpt["metrics"].get(k)) for _, k, both in METRICS if both)
        lines.append(f"| {track['id']} | {track['audio_seconds']:.1f} | {ours_f1} | {ours['rtf']:.3f} | {bp_f1} | "
                     f"{bpt['rtf']:.3f} |")
    return "\n".join(lines) + "\n"


def run(args) -> dict[str, Any]:
    import numpy as np

    from mt3 import audio, metrics, midi_io
    from mt3.api import load_model
    from mt3.data import records

    paths = records.shard_paths(args.data_dir, args.split)
    recs = list(islice(records.read_records(paths), args.max_tracks))
    if not recs:
        raise SystemExit(f"no records in split {args.split!r} of {args.data_dir}")
    gain = 10.0 ** (getattr(args, "gain_db", 0.0) / 20.0)  # the level sets of benchmarks/heldout.py
    with_peer = getattr(args, "peer", True)
    bp_info: dict[str, Any] = {"basic_pitch": None}
    bp_python = None
    if with_peer:
        bp_python = ensure_basic_pitch_python(args.basic_pitch_python)
        bp_info = check_basic_pitch(bp_python)
        print(f"Basic Pitch {bp_info['basic_pitch']}: {bp_info['backend']} model {bp_info['model_path']} "
              f"({', '.join(bp_info['providers'])}), interpreter {bp_python}", flush=True)
    transcriber = getattr(args, "transcriber", None) or load_model(args.checkpoint,
                                                                    gin_bindings=getattr(args, "gin", None) or ())
    model = model_facts(transcriber)
    im = transcriber.inference_model
    onsets_only = bool(im.spec.onsets_only)
    velocity = im.spec.vocab_config.num_velocity_bins > 1
    print(f"our model: {model['name']} step {model['step']} ({model['num_params']:,} parameters, "
          f"{model['model_dir']})", flush=True)

    with tempfile.TemporaryDirectory(prefix="compare_peers.") as tmp_name:
        tmp = Path(tmp_name)
        wavs = []
        for rec in recs:
            wav = tmp / "audio" / f"{len(wavs):03d}.wav"
            wav.parent.mkdir(exist_ok=True)
            audio.write_wav(wav, (rec.audio * np.float32(gain)).astype(np.float32), rec.sample_rate,
                            subtype="FLOAT")
            wavs.append(wav)
        check = audio.load_audio(wavs[0], sample_rate=transcriber.sample_rate, allow_silence=True)
        if not np.array_equal(check, (recs[0].audio * np.float32(gain)).astype(np.float32)):
            raise SystemExit("the WAV written from the record does not read back bit-exactly")
        worker = BasicPitchWorker(bp_python, tmp / "basic_pitch") if with_peer else None
        try:
            print(f"warming up on {recs[0].id} ...", flush=True)
            start = time.perf_counter()
            transcriber.transcribe(wavs[0])
            warm_ours = time.perf_counter() - start
            warm_bp = worker.transcribe(wavs[0], tmp / "warmup.mid")["seconds"] if worker else 0.0
            load_before = load_snapshot()
            tracks, ours_examples, bp_examples = [], [], []
            for index, (rec, wav) in enumerate(zip(recs, wavs, strict=True)):
                start = time.perf_counter()
                result = transcriber.transcribe(wav)
                ours_seconds = time.perf_counter() - start
                seconds = len(rec.audio) / rec.sample_rate
                ref = metrics.prepare_reference(rec.sequence)
                ours_est = midi_io.midi_round_trip(result.ns)
                ours_m = metrics.note_metrics(ref, ours_est, onsets_only=onsets_only, velocity=velocity)
                ours_examples.append((ref, ours_est, result.invalid_events, result.dropped_events))
                if worker is None:
                    bp_answer, bp_est, bp_m = {"seconds": float("nan")}, ref.__class__(), {"onset_f1": None}
                else:
                    bp_midi = tmp / "basic_pitch" / f"{index:03d}.mid"
                    bp_answer = worker.transcribe(wav, bp_midi)
                    bp_est = metrics.prepare_reference(midi_io.load_midi(bp_midi, allow_empty=True))
                    bp_m = metrics.note_metrics(ref, bp_est)
                    bp_examples.append((ref, bp_est))
                tracks.append({
                    "id": rec.id, "audio_seconds": round(seconds, 3),
                    "ref_notes": len(ref.notes), "ref_drum_notes": sum(n.is_drum for n in ref.notes),
                    "ref_programs": program_count(ref),
                    "ref_program_set": sorted({int(n.program) for n in ref.notes if not n.is_drum}),
                    "ours": {"seconds": round(ours_seconds, 4), "rtf": ours_seconds / seconds,
                             "est_notes": len(ours_est.notes), "programs": program_count(ours_est),
                             "invalid_events": result.invalid_events,
                             "decoded_tokens": getattr(result, "decoded_tokens", None),
                             "metrics": ours_m},
                    "basic_pitch": {"seconds": round(bp_answer["seconds"], 4), "rtf": bp_answer["seconds"] / seconds,
                                    "est_notes": len(bp_est.notes), "metrics": bp_m},
                })
                print(f"{rec.id}: {seconds:.1f} s | ours {ours_seconds:.2f} s, onset F1 {_f(ours_m['onset_f1'])} | "
                      f"Basic Pitch {bp_answer['seconds']:.2f} s, onset F1 {_f(bp_m['onset_f1'])}", flush=True)
            load_after = load_snapshot()
        finally:
            if worker is not None:
                worker.close()

    audio_seconds = sum(t["audio_seconds"] for t in tracks)
    ours_mean = metrics.transcription_metrics(ours_examples, onsets_only=onsets_only, velocity=velocity)
    bp_mean = metrics.transcription_metrics(bp_examples) if bp_examples else {}
    for mean in (ours_mean, bp_mean):
        mean.pop("instrument_classes", None)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "model": model,
        "basic_pitch": {**bp_info, "python": str(bp_python), "thresholds": "defaults"},
        "data": {"data_dir": str(args.data_dir), "split": args.split, "tracks": len(tracks),
                 "audio_seconds": round(audio_seconds, 3),
                 "audio": "prepared records' 16 kHz mono float32 samples, written as float WAV; both systems read "
                          "that file (Basic Pitch resamples to 22,050 Hz)"},
        "averaging": "mean over tracks of per-track scores, undefined scores skipped (mt3 eval's "
                     "metrics.transcription_metrics); RTF: total seconds / total audio seconds",
        "warmup_seconds": {"ours": warm_ours, "basic_pitch": warm_bp},
        "load": {"before": load_before, "after": load_after},
        "systems": [
            {"id": "ours", "label": f"mt3 `{model['name']}` step {model['step']}", "mean": ours_mean,
             "rtf": sum(t["ours"]["seconds"] for t in tracks) / audio_seconds},
            {"id": "basic_pitch", "label": f"Basic Pitch {bp_info['basic_pitch']} (ONNX)", "mean": bp_mean,
             "rtf": sum(t["basic_pitch"]["seconds"] for t in tracks) / audio_seconds},
        ],
        "tracks": tracks,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None,
                        help="our model dir (default: the bundled default model, mt3.pretrained.default_model_dir())")
    parser.add_argument("--basic-pitch-python", default=None,
                        help=f"Basic Pitch's interpreter (default: {DEFAULT_VENV.name}/bin/python, created if missing)")
    parser.add_argument("--data-dir", type=Path, default=Path("data/prepared/local"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-tracks", type=int, default=None, help="the first N tracks only (a quick run)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the markdown table; FILE.json beside it")
    parser.add_argument("--gin", action="append", default=[], metavar="BINDING",
                        help="a gin binding for our model, e.g. \"inference.InferenceConfig.decoder_runtime = 'xla'\""
                             " (repeatable)")
    args = parser.parse_args(argv)
    if args.max_tracks is not None and args.max_tracks < 1:
        parser.error("--max-tracks must be >= 1")

    report = run(args)
    write_report(args.out, markdown(report), report)
    return 0


def write_report(out: Path, text: str, report: dict[str, Any]) -> None:
    """The markdown table at `out` and the full report as JSON beside it, each written atomically, and the table
    printed: what every peer benchmark leaves behind."""
    from mt3.data import records

    with records.atomic_write(out, "w") as f:
        f.write(text)
    records.atomic_write_json(out.with_suffix(".json"), report)
    print()
    print(text)
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    sys.exit(main())
