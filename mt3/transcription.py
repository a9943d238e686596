"""Files in, files out for `mt3 transcribe`: which audio files, where each output goes, writing them.

Output layout (also in `mt3 transcribe --help`), chosen so that no two inputs share an output and a user can predict
every name:
- files found in a DIRECTORY argument keep their path relative to it: `slakh/Track00001/mix.flac` given as `slakh/`
  -> `OUT/Track00001/mix.mid`;
- FILE arguments keep their path relative to the deepest directory holding all of them: `song.wav` -> `OUT/song.mid`,
  `slakh/Track*/mix.flac` -> `OUT/TrackNNNNN/mix.mid`;
- inputs that differ only in their extension (`song.mp3`, `song.ogg`) keep it: `OUT/song.mp3.mid`, `OUT/song.ogg.mid`.
Each input gets NAME.mid, and on request NAME.png, NAME.notes.json, NAME.notes.csv and NAME.sonified.wav beside it.
A file's outputs appear together or not at all: each is written under a temporary name and all are renamed at the end,
so a full disk never leaves NAME.mid without its PNG (and a rerun is not refused over a half-written set).
Directories are searched for `mt3.audio.AUDIO_EXTENSIONS` (what the loader reads), minus the tool's own outputs
(`*.sonified.wav`, so a rerun into the input folder does not transcribe its own renders); skipped files are counted.

The model work is `mt3.inference.InferenceModel.transcribe_many` (all files' segments share batches).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mt3 import midi_io
from mt3.audio import AUDIO_EXTENSIONS
from mt3.errors import InputError

SONIFY_SAMPLE_RATE = 44100
SONIFY_SOUNDFONTS = ("FluidR3_GM.sf2", "default-GM.sf2", "TimGM6mb.sf2", "MuseScore_General.sf3")
OUTPUT_SUFFIXES = {"midi": ".mid", "png": ".png", "json": ".notes.json", "csv": ".notes.csv",
                   "wav": ".sonified.wav"}


@dataclass(frozen=True)
class AudioInput:
    """One audio file and its output name under OUT (a relative path without suffix)."""

    path: Path
    name: Path


def is_own_output(path: Path) -> bool:
    """True for a file this tool writes that the loader could read back as audio (NAME.sonified.wav)."""
    return path.name.lower().endswith(OUTPUT_SUFFIXES["wav"])


def expand_inputs(inputs: Sequence[str | os.PathLike], *, skipped: dict[str, list[Path]] | None = None
                  ) -> tuple[list[AudioInput], list[InputError]]:
    """Audio files named by `inputs` (directories expanded recursively, sorted) with collision-free output names
    (the module docstring's rules), and an error for each directory that holds no audio. Paths that do not exist are
    kept, so the caller reports them with the other unreadable files. Files a directory holds but that are not
    transcribed go into `skipped` ("not audio": other extensions; "own output": *.sonified.wav)."""
    found: list[tuple[Path, Path]] = []  # (path, relative path incl. extension)
    direct: list[Path] = []
    errors: list[InputError] = []
    skipped = {} if skipped is None else skipped
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = []
            for p in sorted(p for p in path.rglob("*") if p.is_file()):
                if p.suffix.lower() not in AUDIO_EXTENSIONS:
                    skipped.setdefault("not audio", []).append(p)
                elif is_own_output(p):
                    skipped.setdefault("own output", []).append(p)
                else:
                    files.append(p)
            if not files:
                errors.append(InputError(path, f"directory holds no audio files ({', '.join(AUDIO_EXTENSIONS)})"))
            found.extend((p, p.relative_to(path)) for p in files)
        else:
            direct.append(path)
    if direct:
        common = Path(os.path.commonpath([os.path.abspath(p.parent) for p in direct]))
        found.extend((p, Path(os.path.abspath(p)).relative_to(common)) for p in direct)
    unique: dict[str, tuple[Path, Path]] = {}  # the same file named twice is transcribed once
    for path, relative in found:
        unique.setdefault(os.path.abspath(path), (path, relative))
    stems: dict[Path, int] = {}
    for _, relative in unique.values():
        stems[relative.with_suffix("")] = stems.get(relative.with_suffix(""), 0) + 1
    items = [AudioInput(path=path, name=relative.with_suffix("") if stems[relative.with_suffix("")] == 1 else relative)
             for path, relative in unique.values()]
    return items, errors


def output_paths(name: Path, out_dir: Path, kinds: Sequence[str]) -> dict[str, Path]:
    """{kind: OUT/NAME + suffix} for "midi" and each requested kind ("png", "json", "csv", "wav")."""
    return {kind: out_dir / (str(name) + OUTPUT_SUFFIXES[kind]) for kind in ("midi", *kinds)}


def sonify(ns, path: str | os.PathLike, *, seconds: float | None = None, sample_rate: int = SONIFY_SAMPLE_RATE) -> str:
    """Renders `ns` to a 16-bit stereo WAV at `path` (atomically) and returns the renderer used.

    fluidsynth with a General MIDI soundfont when both are installed (scripts/setup.sh installs them; real instrument
    and drum sounds), else pretty_midi's sine synthesis (no drums). Peak-normalised to -1 dBFS only if it would clip.
    The WAV lasts `seconds` (the input audio's duration, so it lines up with the recording; fluidsynth's release tail
    past it is cut) or, without it, until the last note ends; it is always two channels (mono renders are duplicated),
    whatever renderer or silence produced it.
    """
    import shutil
    import tempfile

    from mt3 import audio
    from mt3.corpus import rendering

    if seconds is None:
        seconds = max([0.0, *(n.end_time for n in ns.notes)])
    soundfont = next((p for name in SONIFY_SOUNDFONTS for d in rendering.SOUNDFONT_DIRS
                      if (p := Path(d) / name).is_file()), None)
    samples, renderer = None, "silence"
    if ns.notes and shutil.which("fluidsynth") and soundfont is not None:
        with tempfile.TemporaryDirectory() as tmp:
            midi_path, wav_path = Path(tmp) / "in.mid", Path(tmp) / "out.wav"
            midi_path.write_bytes(midi_io.midi_bytes(ns))
            try:
                rendering.run_fluidsynth(midi_path, soundfont, wav_path, sample_rate=sample_rate)
                import soundfile

                samples, _ = soundfile.read(str(wav_path), dtype="float32", always_2d=True)
                renderer = f"fluidsynth ({soundfont.name})"
            except (RuntimeError, InputError):
                samples = None
    if samples is None and ns.notes:
        import io

        import pretty_midi

        pm = pretty_midi.PrettyMIDI(io.BytesIO(midi_io.midi_bytes(ns)))
        samples, renderer = pm.synthesize(fs=sample_rate).astype(np.float32), "pretty_midi sine synthesis"
    length = int(round(seconds * sample_rate))
    samples = np.zeros((length, 2), np.float32) if samples is None else np.asarray(samples, np.float32)
    if samples.ndim == 1 or samples.shape[1] == 1:
        samples = np.repeat(samples.reshape(-1, 1), 2, axis=1)
    samples = np.pad(samples[:length, :2], ((0, max(0, length - len(samples))), (0, 0)))
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak > 0.89:
        samples = samples * (0.89 / peak)
    audio.write_wav(path, samples, sample_rate)
    return renderer


def _report(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_output_dir(out_dir: Path) -> None:
    """Refuses, before any model is loaded, an -o that is a file or that cannot be created or written (a read-only
    mount, a folder without write permission): one InputError naming the user's path, not a temporary file."""
    from mt3.output_dirs import check_writable_dir

    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a directory (-o names the directory the outputs go to)")
    check_writable_dir(out_dir, "-o")


def write_outputs(result, outputs: dict[str, Path], *, title: str, qpm: float = midi_io.DEFAULT_QPM) -> str | None:
    """Writes one input's outputs all or nothing: each under a temporary name beside its final one, then all renamed.
    On any error the temporaries (and anything already renamed) are removed and the error names the final path.
    `outputs` may hold any subset of the kinds (--skip-existing writes only the missing ones). Returns the
    sonification renderer (None without --sonify)."""
    from mt3 import plotting

    writers = {"midi": lambda p: midi_io.write_midi(result.ns, p, qpm=qpm),  # byte-equal to `mt3 eval`'s MIDI
               "png": lambda p: plotting.plot_piano_roll(result.ns, p, title=title, seconds=result.audio_seconds),
               "json": lambda p: midi_io.write_notes_json(result.ns, p, confidence=result.confidence),
               "csv": lambda p: midi_io.write_notes_csv(result.ns, p, confidence=result.confidence),
               "wav": lambda p: sonify(result.ns, p, seconds=result.audio_seconds)}
    temps = {kind: path.with_name(f".{path.name}.{os.getpid()}.partial") for kind, path in outputs.items()}
    renderer, done = None, []
    kind = next(iter(outputs), "midi")
    try:
        for kind, temp in temps.items():
            temp.parent.mkdir(parents=True, exist_ok=True)
            value = writers[kind](temp)
            renderer = value if kind == "wav" else renderer
        for kind, temp in temps.items():
            os.replace(temp, outputs[kind])
            done.append(outputs[kind])
    except BaseException as err:
        for path in [*temps.values(), *done]:
            path.unlink(missing_ok=True)
        if not isinstance(err, OSError):
            raise
        raise InputError(outputs[kind], f"cannot write output ({err.strerror or err}); none of this file's outputs "
                                        "were kept") from err
    return renderer


def _plan(items: list[AudioInput], out_dir: Path, kinds: Sequence[str], overwrite: bool,
          fail, skip_existing: bool = False, skipped: list[Path] | None = None
          ) -> list[tuple[AudioInput, dict[str, Path]]]:
    """Output paths per input; an input whose outputs are taken (by another input, an existing file without
    --overwrite, or the input itself) fails alone. With `skip_existing` an input is planned only for the outputs that
    do not exist yet (existing ones are kept as they are), and one with all of them goes into `skipped`."""
    claimed: dict[Path, Path] = {}
    inputs = {Path(os.path.abspath(i.path)) for i in items}
    planned = []
    for item in items:
        outputs = output_paths(item.name, out_dir, kinds)
        try:
            other = next((claimed[p] for p in outputs.values() if p in claimed), None)
            if other is not None:
                raise InputError(item.path, f"would write {outputs['midi']}, as {other} does (transcribe them into "
                                            "different output dirs)")
            onto_input = [str(p) for p in outputs.values() if Path(os.path.abspath(p)) in inputs]
            if onto_input:
                raise InputError(item.path, f"an output would replace the input {onto_input[0]}; choose another -o")
            existing = [str(p) for p in outputs.values() if p.exists()]
            claimed.update({p: item.path for p in outputs.values()})
            if skip_existing and existing:
                outputs = {kind: p for kind, p in outputs.items() if not p.exists()}
                if not outputs:
                    (skipped if skipped is not None else []).append(item.path)
                    continue
            elif existing and not overwrite:
                raise InputError(item.path, f"output exists: {', '.join(existing)} (pass --overwrite to replace it, "
                                            "or --skip-existing to keep it)")
            planned.append((item, outputs))
        except InputError as err:
            fail(err)
    return planned


def transcribe_files(inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike, *,
                     checkpoint: str | os.PathLike | None = None, gin_files: Sequence[str] = (),
                     gin_bindings: Sequence[str] = (), step: int | None = None, batch_size: int | None = None,
                     png: bool = False, notes_json: bool = False, notes_csv: bool = False, sonify_wav: bool = False,
                     overwrite: bool = False, skip_existing: bool = False,
                     note_filter: midi_io.NoteFilter | None = None, midi_qpm: float = midi_io.DEFAULT_QPM,
                     progress: bool = True, model=None) -> list[str]:
    """`mt3 transcribe`: NAME.mid (+ .png, .notes.json, .notes.csv, .sonified.wav) per audio file, laid out as the
    module docstring says; all files are decoded together. `output_dir` "-" writes the MIDI of a single input to
    stdout instead (nothing else: every report line goes to stderr).

    A file that cannot be transcribed (unreadable or truncated audio, an output that exists without `overwrite`, two
    inputs with one output name) gets one `mt3 transcribe: error: PATH: problem` line on stderr and the others go on.
    `skip_existing` transcribes only inputs with a missing output and writes only those. Every output of a file holds
    the same notes: `midi_io.prepare_notes` (the `note_filter`, at most 15 pitched programs, no same-pitch overlap)
    is applied before any is written. Silence and very short files are valid (zero notes, a warning line). One
    summary line ends the run. Returns the error messages (empty = all written). `model` (an InferenceModel) skips
    loading (tests, benchmarks); without `checkpoint` the default model (`mt3.pretrained.default_model_dir()`) is
    used and named on stderr.
    """
    import time

    from mt3 import audio

    started_run = time.perf_counter()
    to_stdout = os.fspath(output_dir) == "-"
    kinds = [k for k, wanted in (("png", png), ("json", notes_json), ("csv", notes_csv), ("wav", sonify_wav))
             if wanted]
    out_dir = Path(output_dir)
    if to_stdout:
        _check_stdout(inputs, kinds, skip_existing)
    else:
        check_output_dir(out_dir)
    if batch_size is not None and batch_size < 1:
        raise InputError(None, f"--batch-size must be >= 1, got {batch_size}")
    if not midi_io.MIN_QPM <= midi_qpm <= midi_io.MAX_QPM:
        raise InputError(None, f"--midi-tempo must be in {midi_io.MIN_QPM:g}..{midi_io.MAX_QPM:g} quarter notes per "
                               f"minute, got {midi_qpm:g}")
    failures: list[str] = []
    tally = {"done": 0, "notes": 0, "seconds": 0.0, "failed_files": 0}

    def fail(err: InputError) -> None:
        failures.append(str(err))
        _report(f"mt3 transcribe: error: {err}")

    skipped: dict[str, list[Path]] = {}
    items, errors = expand_inputs(inputs, skipped=skipped)
    for err in errors:
        fail(err)
    if skipped:
        _report(_skipped_line(skipped))
    if to_stdout and len(items) != 1:
        raise InputError(None, f"-o - writes the MIDI of one input to stdout; {len(items)} audio files were given")
    up_to_date: list[Path] = []
    planned = ([(items[0], {"midi": Path("-")})] if to_stdout else
               _plan(items, out_dir, kinds, overwrite, fail, skip_existing=skip_existing, skipped=up_to_date))
    jobs: list[tuple[AudioInput, dict[str, Path], np.ndarray]] = []
    for item, outputs in planned:
        try:
            samples = audio.load_audio(item.path, allow_silence=True)
        except InputError as err:
            fail(err)
            continue
        jobs.append((item, outputs, samples))
    if jobs:
        _transcribe_jobs(jobs, model=model, fail=fail, tally=tally, note_filter=note_filter, midi_qpm=midi_qpm,
                         to_stdout=to_stdout, progress=progress,
                         load=lambda: _load_model(checkpoint, gin_files=gin_files, gin_bindings=gin_bindings,
                                                  step=step, batch_size=batch_size))
    _report(summary_line(done=tally["done"], skipped=len(up_to_date), failed=len(failures), notes=tally["notes"],
                         audio_seconds=tally["seconds"], wall_seconds=time.perf_counter() - started_run))
    return failures


def _transcribe_jobs(jobs, *, model, load, fail, tally: dict, note_filter, midi_qpm: float, to_stdout: bool,
                     progress: bool) -> None:
    """Decodes every job's audio together, then writes each file's outputs and prints its line."""
    import time

    from mt3 import audio, model_loading
    from mt3.training import compilation

    if model is None:
        started = time.perf_counter()
        model = load()
        _report(f"mt3 transcribe: model loaded in {time.perf_counter() - started:.1f} s (decoder step: "
                f"{model.decoder_runtime})")
    for item, _, samples in jobs:  # after loading: the line says whether this model normalises its input
        for line in audio.input_warnings(samples, model.sample_rate, model_loading.resolved_input_peak(model.config)):
            _report(f"mt3 transcribe: warning: {item.path}: {line}")  # `mt3 serve` returns the same lines
    compiled, started = compilation.compile_seconds(), time.perf_counter()
    results = model.transcribe_many([samples for _, _, samples in jobs], progress=progress)
    wall, compile_s = time.perf_counter() - started, compilation.compile_seconds() - compiled
    audio_s = sum(r.audio_seconds for r in results)
    _report(f"mt3 transcribe: decoded {audio_s:.1f} s of audio in {wall:.1f} s, {compile_s:.1f} s of it compiling "
            f"(RTF {max(wall - compile_s, 0.0) / max(audio_s, 1e-9):.3f} without compiling)")
    for (item, outputs, _), result in zip(jobs, results, strict=True):
        for line in result.program_report.lines() if result.program_report else []:  # what --programs etc. did
            _report(f"mt3 transcribe: {item.path}: {line}")
        if result.low_confidence_dropped:
            _report(f"mt3 transcribe: {item.path}: {result.low_confidence_dropped} notes below --min-confidence "
                    f"{model.config.min_confidence:g} dropped")
        result.ns, prepared = midi_io.prepare_notes(result.ns, note_filter)  # every output holds what the MIDI holds
        for line in prepared.warnings():
            _report(f"mt3 transcribe: warning: {item.path}: {line}")
        try:
            if to_stdout:
                renderer = _write_stdout(midi_io.midi_bytes(result.ns, qpm=midi_qpm))
            else:
                renderer = write_outputs(result, outputs, title=item.path.name, qpm=midi_qpm)
        except InputError as err:
            fail(err)
            continue
        tally["done"] += 1
        tally["notes"] += len(result.ns.notes)
        tally["seconds"] += result.audio_seconds
        extra = [f"{result.duplicate_notes_removed} duplicate notes removed"] if result.duplicate_notes_removed else []
        extra += [prepared.summary()] if prepared.summary() else []
        extra += [f"sonified with {renderer}"] if renderer else []
        target = "stdout" if to_stdout else ", ".join(str(p) for p in outputs.values())
        _report(f"mt3 transcribe: {item.path} -> {target} ({midi_io.plural(len(result.ns.notes), 'note')}; "
                f"{result.invalid_events} invalid, {result.dropped_events} dropped events"
                f"{''.join(f'; {e}' for e in extra)})")


def summary_line(*, done: int, skipped: int, failed: int, notes: int, audio_seconds: float,
                 wall_seconds: float) -> str:
    """The line that ends a run: '3 files transcribed, 1 skipped (outputs exist), 0 failed; 1,204 notes; 61.4 s of
    audio in 12.0 s' (a batch user reads the outcome from the last line, not from scrolling)."""
    return (f"mt3 transcribe: done: {midi_io.plural(done, 'file')} transcribed, {skipped} skipped (outputs exist), "
            f"{failed} failed; {midi_io.plural(notes, 'note')}; {audio_seconds:.1f} s of audio in "
            f"{wall_seconds:.1f} s")


def _check_stdout(inputs, kinds: Sequence[str], skip_existing: bool) -> None:
    """`-o -` (MIDI to stdout): one input, no other outputs, and a stdout that is not a terminal (binary MIDI would
    garble it). Checked before any audio is read or model loaded."""
    if kinds:
        flags = ", ".join({"png": "--png", "json": "--json", "csv": "--csv", "wav": "--sonify"}[k] for k in kinds)
        raise InputError(None, f"-o - writes only the MIDI file to stdout; {flags} need an output directory")
    if skip_existing:
        raise InputError(None, "-o - writes to stdout; --skip-existing needs an output directory")
    if len(inputs) != 1:
        raise InputError(None, f"-o - writes the MIDI of one input to stdout; {len(inputs)} inputs were given")
    if sys.stdout.isatty():
        raise InputError(None, "-o - would write binary MIDI to the terminal; redirect stdout (mt3 transcribe a.wav "
                               "-o - > a.mid) or pipe it")


def _write_stdout(data: bytes) -> None:
    """The MIDI bytes to stdout in one write (flushed, so a pipe reader sees a whole file)."""
    stream = getattr(sys.stdout, "buffer", None)
    if stream is None:  # a text-only stdout (e.g. redirected in-process): write the bytes through its encoding
        raise InputError(None, "-o -: stdout does not accept bytes here")
    try:
        stream.write(data)
        stream.flush()
    except BrokenPipeError as err:
        raise InputError(None, "-o -: the reader of stdout went away before the MIDI was written") from err


def _skipped_line(skipped: dict[str, list[Path]]) -> str:
    """One line counting the files directories held that are not transcribed, by reason and extension."""
    parts = []
    if skipped.get("not audio"):
        by_ext: dict[str, int] = {}
        for p in skipped["not audio"]:
            by_ext[p.suffix.lower() or "(none)"] = by_ext.get(p.suffix.lower() or "(none)", 0) + 1
        exts = ", ".join(f"{ext} {n}" for ext, n in sorted(by_ext.items(), key=lambda kv: (-kv[1], kv[0]))[:6])
        parts.append(f"{len(skipped['not audio'])} not audio ({exts})")
    if skipped.get("own output"):
        parts.append(f"{len(skipped['own output'])} written by mt3 transcribe (*{OUTPUT_SUFFIXES['wav']})")
    return (f"mt3 transcribe: skipped {' and '.join(parts)}; audio is {' '.join(AUDIO_EXTENSIONS)}")


def resolve_model_dir(checkpoint: str | os.PathLike | None, command: str) -> Path:
    """`--checkpoint` or, without it, the default model (`mt3.pretrained.default_model_dir()`); InputError when that
    does not exist. Shared by transcribe, eval and serve so all three say the same thing."""
    if checkpoint is not None:
        from mt3 import paths

        if paths.is_url(checkpoint):  # gs://...: read in place (orbax, fsspec); Path() would make it a local folder
            paths.require(checkpoint, "--checkpoint")
            return paths.absolute(checkpoint)
        return Path(checkpoint)
    from mt3.pretrained import default_model_dir

    default = default_model_dir()
    if not default.is_dir():
        raise InputError(None, f"no --checkpoint given and no default model: {default} does not exist (train one "
                               "with `bash scripts/quickstart.sh`, or pass --checkpoint MODEL_DIR)")
    _report(f"mt3 {command}: no --checkpoint given: using the default model {default}")
    return default


def _load_model(checkpoint, *, gin_files, gin_bindings, step, batch_size):
    from mt3 import model_loading

    model_dir = resolve_model_dir(checkpoint, "transcribe")
    model = model_loading.load_inference_model(model_dir, gin_files=gin_files, gin_bindings=gin_bindings, step=step,
                                               batch_size=batch_size)
    _report(f"mt3 transcribe: model {model_dir} (step {model.info.get('step')})")
    return model
