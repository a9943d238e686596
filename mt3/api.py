"""The Python API: `mt3.load_model()` and `Transcriber.transcribe(audio)`.

Why a module of its own: users of piano_transcription_inference or basic-pitch expect "load once, call on a file or an
array" without gin, model dirs or segmenting. This module is that layer and nothing more:

- files go through `mt3.audio.load_audio` exactly as `mt3 transcribe` reads them (decode, average channels, soxr);
- arrays are validated HERE, before any decoding, so a user mistake (int16 samples, NaN, a missing sample rate, a
  transposed stereo array) is one clear `ValueError` instead of garbage notes; they are then mixed down and resampled
  with the same `mt3.audio.resample` as files (one resampler in the project);
- decoding is `mt3.inference.InferenceModel.transcribe_many`, so several inputs share batches as in the CLI.

Array rules (documented in the README):
- dtype: float16/32/64 are taken as samples in [-1, 1] (a peak above `MAX_FLOAT_PEAK` is refused as unscaled integer
  PCM); int8/int16/int32 are divided by their full-scale value (128, 32768, 2**31) and uint8 is offset-binary
  ((x - 128) / 128), as in WAV files; other dtypes (int64, bool, complex, ...) are refused.
- shape: (n,) is mono; a 2-D array is (n, channels) when its second axis is the shorter one and has at most
  `MAX_CHANNELS` entries (soundfile's layout), (channels, n) when its first axis is (librosa/torchaudio's layout);
  channels are averaged. Anything else is refused rather than guessed.
- `sample_rate` is required for arrays and refused for paths (a file's header gives its rate).
- silence is valid input, as in `mt3 transcribe`: all-zero or empty (0-sample) arrays give zero notes.

Encoded audio in memory (`bytes`, or a binary file object such as `open(p, 'rb')` or an upload stream) is decoded as
a file is (`mt3.audio.load_audio_bytes`); its header gives the rate.

Options are keyword arguments, never gin strings: the instrument-consistency options (`programs`,
`two_pass_programs`, `reassign_programs`, `min_program_share`; docs/instrument_consistency.md) as defaults in
`load_model` and per call in `transcribe`, and the note filters of `mt3 transcribe` (`min_note_ms`, `min_pitch`,
`max_pitch`). Every result holds what its MIDI file holds (`midi_io.prepare_notes`). Errors name the argument, not a
command-line flag.

`import mt3.api` costs numpy only: JAX, note_seq and the model are imported by `load_model` / when used.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

import numpy as np

from mt3.errors import InputError

if TYPE_CHECKING:
    from mt3.inference import InferenceModel

MAX_CHANNELS = 8  # up to 7.1 surround; a longer "channel" axis means the layout is ambiguous or wrong
MAX_FLOAT_PEAK = 8.0  # 18 dB over full scale: beyond this a float array is integer PCM that was never scaled
_INT_FULL_SCALE = {np.dtype(np.int8): 2.0 ** 7, np.dtype(np.int16): 2.0 ** 15, np.dtype(np.int32): 2.0 ** 31}

AudioInput = str | os.PathLike | np.ndarray | bytes | bytearray | memoryview | BinaryIO
CONSISTENCY_OPTIONS = ("programs", "two_pass_programs", "reassign_programs", "min_program_share")


class Note(NamedTuple):
    """One transcribed note. Times in seconds; `program` is the GM program (0-127), meaningless when `is_drum`."""

    onset: float
    offset: float
    pitch: int
    velocity: int
    program: int
    is_drum: bool


@dataclasses.dataclass(frozen=True)
class Transcription:
    """One input's result.

    `ns` is the stitched `note_seq.NoteSequence` (one instrument per program, drums on instrument 9); `notes` lists the
    same notes sorted by onset then pitch, with the fields and rounding of `mt3 transcribe --json`.
    """

    ns: Any = dataclasses.field(repr=False)  # thousands of notes: the REPL shows a summary instead
    notes: tuple[Note, ...] = dataclasses.field(repr=False)
    audio_seconds: float
    invalid_events: int  # model outputs that made no sense in context (e.g. an offset of a note that is not on)
    dropped_events: int  # model outputs timed past the end of their segment
    source: str | None  # the file path (or a file object's name), None for an array or bytes
    decoded_tokens: int = 0  # tokens the model emitted before EOS, summed over segments (invalid_events' base)
    warnings: tuple[str, ...] = ()  # e.g. programs merged because a MIDI file has 15 pitched channels

    def write_midi(self, path: str | os.PathLike, *, tempo: float = 120.0) -> Path:
        """Writes the multitrack MIDI file `mt3 transcribe` would write (atomically); returns its path. `tempo`
        (quarter notes per minute) sets only the beat grid a DAW shows, as `--midi-tempo`."""
        from mt3 import midi_io

        midi_io.write_midi(self.ns, path, qpm=tempo)
        return Path(path)

    def midi_bytes(self, *, tempo: float = 120.0) -> bytes:
        """The bytes `write_midi` writes (to send or store elsewhere)."""
        from mt3 import midi_io

        return midi_io.midi_bytes(self.ns, qpm=tempo)

    def __repr__(self) -> str:
        programs = {"drums" if n.is_drum else n.program for n in self.notes}
        return (f"Transcription(source={self.source!r}, {len(self.notes)} notes, {len(programs)} instruments, "
                f"{self.audio_seconds:.2f} s of audio, {self.invalid_events} invalid events)")

    def to_dicts(self) -> list[dict[str, Any]]:
        """The notes as `{onset, offset, pitch, velocity, program, is_drum}` dicts (the notes JSON format)."""
        return [n._asdict() for n in self.notes]


def prepare_array(samples: Any, sample_rate: Any, *, target_rate: int, name: str = "audio") -> np.ndarray:
    """An audio array (any dtype/layout the module docstring allows) -> mono float32 at `target_rate`.

    Raises ValueError naming `name` and the problem. Public so callers can check input without a model.
    """
    from mt3 import audio

    if sample_rate is None:
        raise ValueError(f"{name}: sample_rate is required for an audio array (e.g. transcribe(samples, "
                         "sample_rate=44100)); only files carry their own rate")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | float | np.integer | np.floating) or \
            int(sample_rate) != sample_rate or not audio.MIN_SAMPLE_RATE <= sample_rate <= audio.MAX_SAMPLE_RATE:
        raise ValueError(f"{name}: sample_rate must be an integer number of Hz in {audio.MIN_SAMPLE_RATE}.."
                         f"{audio.MAX_SAMPLE_RATE}, got {sample_rate!r}")
    array = np.asarray(samples)
    mono = _to_mono(_to_float(array, name), name)
    return audio.resample(mono, int(sample_rate), int(target_rate))


def _to_float(array: np.ndarray, name: str) -> np.ndarray:
    """Scales integer PCM to [-1, 1) and checks floats are finite and plausibly scaled."""
    dtype = array.dtype
    if dtype in _INT_FULL_SCALE:
        return (array.astype(np.float64) / _INT_FULL_SCALE[dtype]).astype(np.float32)
    if dtype == np.uint8:
        return ((array.astype(np.float64) - 128.0) / 128.0).astype(np.float32)
    if dtype.kind != "f":
        hint = " (numpy's default integer type, so the scale is unknown)" if dtype == np.int64 else ""
        raise ValueError(f"{name}: unsupported sample dtype {dtype}{hint}; pass float32 samples in [-1, 1] or "
                         "int16/int32 PCM")
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise ValueError(f"{name}: contains {bad} non-finite (NaN/Inf) sample{'s' if bad != 1 else ''}")
    peak = float(np.max(np.abs(array))) if array.size else 0.0
    if peak > MAX_FLOAT_PEAK:
        raise ValueError(f"{name}: float samples peak at {peak:g}, expected values in [-1, 1]; this looks like "
                         "integer PCM stored as float (divide int16 data by 32768, or pass the int16 array itself)")
    return array.astype(np.float32, copy=False)


def _to_mono(array: np.ndarray, name: str) -> np.ndarray:
    """(n,), (n, channels) or (channels, n) -> (n,) by averaging channels; other shapes are refused."""
    if array.ndim == 1:
        mono = array
    elif array.ndim == 2:
        rows, cols = array.shape
        if 1 <= cols <= MAX_CHANNELS and (rows > cols or rows == 0):  # (n, channels), possibly empty
            mono = array.mean(axis=1, dtype=np.float32) if rows else np.zeros(0, np.float32)
        elif 1 <= rows <= MAX_CHANNELS and cols > rows:  # (channels, n)
            mono = array.mean(axis=0, dtype=np.float32)
        else:
            raise ValueError(f"{name}: cannot tell samples from channels in shape {array.shape}; pass (n,) mono, "
                             f"(n, channels) or (channels, n) with at most {MAX_CHANNELS} channels and more samples "
                             "than channels")
    else:
        raise ValueError(f"{name}: expected a 1-D (mono) or 2-D (multichannel) array, got shape {array.shape}")
    return np.ascontiguousarray(mono, dtype=np.float32)


class Transcriber:
    """A loaded model: `transcribe(audio)` for one input, `transcribe_many(audios)` to batch several.

    Get one from `mt3.load_model()`; wrap an existing `InferenceModel` directly if you already have one.
    """

    def __init__(self, inference_model: InferenceModel):
        self.inference_model = inference_model

    def __repr__(self) -> str:
        info = self.inference_model.info
        return f"Transcriber(model_dir={info.get('model_dir')!r}, step={info.get('step')!r})"

    @property
    def sample_rate(self) -> int:
        """The rate the model hears (16 kHz); inputs at other rates are resampled to it."""
        return self.inference_model.sample_rate

    @property
    def info(self) -> dict[str, Any]:
        """Model facts: model dir, checkpoint step, sizes, decoding settings."""
        return self.inference_model.describe()

    def transcribe(self, audio: AudioInput, sample_rate: int | None = None, *, progress: bool = False,
                   **options) -> Transcription:
        """One audio file path, array, bytes or binary file object -> Transcription. Arrays need `sample_rate`.
        `options`: as `transcribe_many`."""
        return self.transcribe_many([audio], [sample_rate], progress=progress, **options)[0]

    def transcribe_many(self, audios: Sequence[AudioInput], sample_rate: int | Sequence[int | None] | None = None, *,
                        progress: bool = False, programs: Sequence[int] | None = None,
                        two_pass_programs: bool | None = None, reassign_programs: str | None = None,
                        min_program_share: float | None = None, min_note_ms: float = 0.0, min_pitch: int = 0,
                        max_pitch: int = 127) -> list[Transcription]:
        """Several inputs, decoded together (their segments share batches); results in input order.

        `sample_rate` is one rate for every array (other inputs ignore it), or one entry per input (None for the
        others). Every input is read and checked before decoding starts, so a bad one fails fast, naming its index or
        path. The consistency options override `load_model`'s for this call (None: keep them); `min_note_ms`,
        `min_pitch`, `max_pitch` drop pitched notes as `mt3 transcribe --min-note-ms/--min-pitch/--max-pitch`.
        """
        from mt3 import midi_io

        if isinstance(audios, str | os.PathLike | np.ndarray | bytes | bytearray | memoryview) or hasattr(audios,
                                                                                                           "read"):
            raise TypeError("transcribe_many takes a list of inputs; use transcribe() for a single input")
        note_filter = midi_io.NoteFilter(min_note_ms=min_note_ms, min_pitch=min_pitch, max_pitch=max_pitch)
        model = self._with_options(programs=programs, two_pass_programs=two_pass_programs,
                                   reassign_programs=reassign_programs, min_program_share=min_program_share)
        audios = list(audios)
        if isinstance(sample_rate, Sequence):
            rates = list(sample_rate)
            if len(rates) != len(audios):
                raise ValueError(f"transcribe_many: {len(rates)} sample rates for {len(audios)} inputs")
        else:
            rates = [sample_rate] * len(audios)
        samples, sources = [], []
        for index, (item, rate) in enumerate(zip(audios, rates, strict=True)):
            mono, source = self._load(item, rate, f"audio[{index}]" if len(audios) > 1 else "audio",
                                      per_input_rate=isinstance(sample_rate, Sequence))
            samples.append(mono)
            sources.append(source)
            _warn_if_quiet(mono, source or (f"audio[{index}]" if len(audios) > 1 else "audio"),
                           getattr(model, "config", None))
        if not samples:
            return []
        results = model.transcribe_many(samples, progress=progress)
        return [_wrap(result, source, note_filter) for result, source in zip(results, sources, strict=True)]

    def _with_options(self, **options) -> InferenceModel:
        """The inference model with the given consistency options (None = as loaded) in its config: a shallow copy
        sharing parameters and compiled decoder, so a per-call option never changes the Transcriber."""
        import copy

        given = {k: v for k, v in options.items() if v is not None}
        if not given:
            return self.inference_model
        model = copy.copy(self.inference_model)
        model.config = _consistency_config(self.inference_model.config, given)
        return model

    def _load(self, item: AudioInput, rate, name: str, *, per_input_rate: bool) -> tuple[np.ndarray, str | None]:
        from mt3 import audio

        if isinstance(item, str | os.PathLike):
            if rate is not None and per_input_rate:  # a shared rate is for the arrays among the inputs
                raise ValueError(f"{os.fspath(item)}: sample_rate is for arrays; a file's header gives its rate")
            return audio.load_audio(item, sample_rate=self.sample_rate, allow_silence=True), os.fspath(item)
        if isinstance(item, bytes | bytearray | memoryview) or hasattr(item, "read"):
            source = getattr(item, "name", None)
            source = os.fspath(source) if isinstance(source, str | os.PathLike) else None
            label = source or name
            if rate is not None and per_input_rate:
                raise ValueError(f"{label}: sample_rate is for arrays; an encoded file's header gives its rate")
            if isinstance(item, io.TextIOBase):
                raise TypeError(f"{label}: the file object gave str, not bytes; open it in binary mode ('rb')")
            data = item.read() if hasattr(item, "read") else bytes(item)
            if not isinstance(data, bytes | bytearray):
                raise TypeError(f"{label}: the file object gave {type(data).__name__}, not bytes; open it in binary "
                                "mode ('rb')")
            return audio.load_audio_bytes(bytes(data), name=label, sample_rate=self.sample_rate), source
        return prepare_array(item, rate, target_rate=self.sample_rate, name=name), None


def _consistency_config(config, options: dict[str, Any]):
    """`config` (an InferenceConfig) with the instrument-consistency keyword options; ValueError naming the keyword
    (not a gin binding or a command-line flag) when a value is refused."""
    from mt3 import program_consistency

    unknown = set(options) - set(CONSISTENCY_OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; the consistency options are {CONSISTENCY_OPTIONS}")
    options = dict(options)
    if isinstance(options.get("programs"), str):
        raise TypeError(f"programs takes a list of GM program numbers (e.g. [0, 33]), got {options['programs']!r}")
    if options.get("programs") is not None:
        options["programs"] = program_consistency.check_programs(tuple(options["programs"]), "programs")
    try:
        return dataclasses.replace(config, **options)
    except ValueError as err:
        raise ValueError(str(err).replace("InferenceConfig.", "")) from None


def _warn_if_quiet(samples: np.ndarray, name: str, config) -> None:
    """A UserWarning (as `mt3 transcribe`'s warning line) when the input peaks far below the training recordings'
    level, saying whether the model (its InferenceConfig `config`) normalises such input or hears it as it is."""
    import warnings

    from mt3 import audio, model_loading

    line = audio.quiet_warning(samples, model_loading.resolved_input_peak(config))
    if line is not None:
        warnings.warn(f"{name}: {line}", UserWarning, stacklevel=4)


def _wrap(result, source: str | None, note_filter=None) -> Transcription:
    """The model's result as the MIDI file holds it (`midi_io.prepare_notes`), so `notes`, `ns` and `write_midi`
    agree; its warnings are also issued as UserWarnings."""
    import warnings

    from mt3 import midi_io

    ns, report = midi_io.prepare_notes(result.ns, note_filter)
    for line in report.warnings():
        warnings.warn(f"{source or 'audio'}: {line}", UserWarning, stacklevel=4)
    notes = tuple(Note(**d) for d in midi_io.notes_to_dicts(ns))
    return Transcription(ns=ns, notes=notes, audio_seconds=float(result.audio_seconds),
                         invalid_events=int(result.invalid_events), dropped_events=int(result.dropped_events),
                         source=source, decoded_tokens=int(result.decoded_tokens), warnings=tuple(report.warnings()))


def load_model(checkpoint: str | os.PathLike | None = None, *, batch_size: int | None = None, step: int | None = None,
               programs: Sequence[int] | None = None, two_pass_programs: bool = False,
               reassign_programs: str = "none", min_program_share: float | None = None,
               gin_bindings: Sequence[str] = ()) -> Transcriber:
    """A `Transcriber` for a model dir written by `mt3 train` (None = the default model: the bundled one, else the
    quickstart's `runs/local_tiny`). `batch_size` overrides the decoding batch, `step` picks a checkpoint (default:
    the latest). `programs`, `two_pass_programs`, `reassign_programs` ('none', 'family', 'dominant') and
    `min_program_share` are the instrument-consistency options (docs/instrument_consistency.md), the defaults of
    every `transcribe` call. `gin_bindings` are extra `NAME = VALUE` lines for anything else gin configures.

    Raises ValueError for a bad option (before anything loads), `mt3.errors.InputError` when the directory is missing
    or holds no model; neither names a command-line flag. Imports JAX here, not before.
    """
    from mt3 import inference, model_loading, pretrained

    options = {"programs": programs, "two_pass_programs": two_pass_programs or None,
               "reassign_programs": None if reassign_programs == "none" else reassign_programs,
               "min_program_share": min_program_share}
    options = {k: v for k, v in options.items() if v is not None}
    _consistency_config(inference.InferenceConfig(), options)  # a bad value fails here, before the model loads
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")

    if checkpoint is None:
        checkpoint = pretrained.default_model_dir()
        if not (Path(checkpoint) / "config.gin").is_file():
            raise InputError(checkpoint, "no default model is installed (no bundled model in the package and no "
                                         "quickstart model dir here); pass load_model('MODEL_DIR') with a model dir "
                                         "from `mt3 train`, or train one with `bash scripts/quickstart.sh`")
    try:
        im = model_loading.load_inference_model(checkpoint, gin_bindings=gin_bindings, step=step,
                                                batch_size=batch_size)
    except InputError as err:
        raise InputError(err.path, _api_wording(err.problem)) from err
    if options:
        im.config = _consistency_config(im.config, options)
    return Transcriber(im)


def _api_wording(problem: str) -> str:
    """A loader message as a Python caller reads it: `--gin.NAME=VALUE` becomes the gin_bindings entry
    'NAME = VALUE', `--checkpoint` the checkpoint argument (the loader is shared with the command line)."""
    import re

    problem = re.sub(r"--gin\.([A-Za-z_][\w.]*)=(\S+?)(:?)(?=\s|$)", r"gin_bindings entry '\1 = \2'\3", problem)
    return problem.replace("--checkpoint", "load_model(checkpoint=...)").replace("--step", "step=")
