"""Audio -> segments -> batched KV-cached decoding -> stitched NoteSequence -> multitrack MIDI.

MT3's inference recipe (REFERENCE §6): load mono 16 kHz audio, cut it into 128-sample frames (`split_audio`), group
the frames into consecutive non-overlapping segments of the model's input length (256 frames for the MT3 vocabulary,
512 for ismir2021; the last one zero-padded), decode every segment independently, then stitch the segments' tokens in
time order with one decoding state (`metrics_utils.event_predictions_to_ns`; ties carry notes across boundaries).

Why a class: the jitted decoder is compiled once per (batch, input length, decode length) and reused for every file
and request, so shapes are static: segments of one or MANY files are packed into batches of exactly `batch_size`
rows (the last batch padded with silent segments whose outputs are discarded). `mt3 transcribe` (files in and out:
`mt3.transcription`), `mt3 eval` and `mt3 serve` all go through `InferenceModel`.

No TensorFlow and no seqio here (GPU hosts without TF run this); JAX/note_seq are imported when used.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mt3 import (
    audio,
    compilation,
    metrics_utils,
    midi_io,
    note_sequences,
    program_consistency,
    spectrograms,
    vocabularies,
)
from mt3.errors import InputError

# Ticks per quarter note of the MIDI files we write. At the default 120 qpm this is 1000 ticks per second, so times on
# the codec's 10 ms grid survive a MIDI round trip exactly (note_seq's default 220 would move them by up to 1.1 ms).
MIDI_TICKS_PER_QUARTER = 500
MIDI_QPM = 120.0


DEFAULT_MAX_DECODE_LEN = 1024  # MT3's, for a model whose config names no target length

@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """How to decode. Defaults are MT3's eval/infer gin: batch 32, greedy. max_decode_len None means "the target
    length the model was trained with" (TASK_FEATURE_LENGTHS['targets'] of its config.gin; MT3's 1024 without one):
    decoding past it only produces tokens the model never learned to place.

    temperature > 0 samples from softmax(logits / temperature) (restricted to the top_k ids when top_k > 0), with
    a per-batch rng derived from `seed`; temperature 0 is greedy (top_k ignored).

    compact_decoding (greedy only): `decoding.greedy_decode_compacting`, the same tokens as the fixed-shape loop, but
    finished rows are dropped and the KV cache grows on demand (docs/instrument_consistency.md, "Decoding speed").

    Instrument consistency (`mt3.program_consistency`; greedy only; all off = MT3's behaviour): `programs` restricts
    every segment's program tokens to a user-given set; `two_pass_programs` decodes twice, the second time restricted
    to the programs holding >= `min_program_share` of the first pass's pitched notes; `reassign_programs` ('family',
    'dominant') moves notes to the file's dominant program of their GM family / of the file after stitching.

    input_peak_db: each file is peak-normalised to this dBFS before framing (None: as given, MT3's behaviour;
    'model': the INPUT_PEAK_DB macro of the model's config.gin, i.e. the level its training audio had, else None).
    Why: a model sees a file's level through the log-mel, and ours train on mixes normalised to a -1 dBFS peak; a
    recording at -30 dB then reaches it as the same music, not as near-silence. Files below -80 dBFS stay as given.
    """

    batch_size: int = 32
    max_decode_len: int | None = None
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    compact_decoding: bool = True
    programs: tuple[int, ...] | None = None
    two_pass_programs: bool = False
    min_program_share: float = 0.05
    reassign_programs: str = "none"
    input_peak_db: float | str | None = "model"

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"InferenceConfig.batch_size must be a positive int, got {self.batch_size!r}")
        if self.max_decode_len is not None and (isinstance(self.max_decode_len, bool) or
                                                not isinstance(self.max_decode_len, int) or self.max_decode_len < 1):
            raise ValueError(f"InferenceConfig.max_decode_len must be a positive int, got {self.max_decode_len!r}")
        if not self.temperature >= 0.0:
            raise ValueError(f"InferenceConfig.temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"InferenceConfig.top_k must be an int >= 0 (0 = no restriction), got {self.top_k!r}")
        from mt3 import program_consistency

        object.__setattr__(self, "programs", program_consistency.check_programs(self.programs,
                                                                                "InferenceConfig.programs"))
        if self.reassign_programs not in program_consistency.REASSIGN_MODES:
            raise ValueError(f"InferenceConfig.reassign_programs must be one of {program_consistency.REASSIGN_MODES}"
                             f", got {self.reassign_programs!r}")
        if not 0.0 <= self.min_program_share < 1.0:
            raise ValueError(f"InferenceConfig.min_program_share must be in [0, 1), got {self.min_program_share!r}")
        if not (self.input_peak_db in (None, "model") or (isinstance(self.input_peak_db, (int, float))
                                                             and not isinstance(self.input_peak_db, bool)
                                                             and -80.0 < self.input_peak_db <= 0.0)):
            raise ValueError("InferenceConfig.input_peak_db must be None, 'model' or a peak in (-80, 0] dBFS, got "
                             f"{self.input_peak_db!r}")
        if (self.programs is not None or self.two_pass_programs) and self.temperature > 0:
            raise ValueError("InferenceConfig.programs / two_pass_programs constrain greedy decoding; "
                             "set temperature = 0")

    @property
    def constrains_programs(self) -> bool:
        return self.programs is not None or self.two_pass_programs


@dataclasses.dataclass(frozen=True)
class OutputSpec:
    """What the model's tokens mean: vocabulary, tie sections, segment length in frames, onsets-only."""

    vocab_config: vocabularies.VocabularyConfig = vocabularies.MT3_VOCAB_CONFIG
    include_ties: bool = True
    input_frames: int = 256
    onsets_only: bool = False

    @classmethod
    def for_vocab(cls, name: str) -> OutputSpec:
        """MT3's settings for a vocabulary preset: 'mt3' (ties, 256 frames) or 'ismir2021' (no ties, 512 frames)."""
        settings = metrics_utils.VOCAB_SETTINGS.get(name)
        if settings is None:
            raise ValueError(f"unknown vocabulary {name!r}; choose one of {sorted(metrics_utils.VOCAB_SETTINGS)}")
        return cls(vocab_config=vocabularies.vocab_config_from_name(name), include_ties=settings["include_ties"],
                   input_frames=settings["input_frames"])

    @property
    def encoding_spec(self):
        if self.onsets_only:
            return note_sequences.NoteOnsetEncodingSpec
        return note_sequences.NoteEncodingWithTiesSpec if self.include_ties else note_sequences.NoteEncodingSpec


@dataclasses.dataclass
class Transcription:
    """One file's result. `ns` is the stitched NoteSequence (instruments assigned per program, drums on 9)."""

    ns: Any
    invalid_events: int
    dropped_events: int
    num_segments: int
    audio_seconds: float
    decoded_tokens: int  # tokens before EOS, summed over segments (EOS not counted)
    duplicate_notes_removed: int = 0  # exact duplicates dropped after stitching (`midi_io.remove_duplicate_notes`)

    def notes(self) -> list[dict[str, Any]]:
        return midi_io.notes_to_dicts(self.ns)


@dataclasses.dataclass
class _Segments:
    """The segments of one file: frames [n, L, hop] float32 and start times [n] (seconds, first frame of each)."""

    frames: np.ndarray
    start_times: np.ndarray
    audio_seconds: float


class InferenceModel:
    """A model + parameters ready to transcribe: segmenting, batched jitted decoding, stitching.

    Construct it from a model directory with `load_inference_model`, or directly from a
    `models.ContinuousInputsEncoderDecoderModel` and its parameters (tests, benchmarks).
    """

    def __init__(self, model, params, *, spec: OutputSpec = OutputSpec(), config: InferenceConfig = InferenceConfig(),
                 info: dict[str, Any] | None = None):
        import jax

        from mt3.models import decoding

        compilation.listen_to_compiles()
        net_config = model.module.config
        if net_config.input_frontend != "frames":
            raise ValueError("inference needs a model whose encoder reads raw sample frames (input_frontend='frames'), "
                             f"got {net_config.input_frontend!r}")
        self.model = model
        self.spec = spec
        if config.max_decode_len is None:
            config = dataclasses.replace(config, max_decode_len=DEFAULT_MAX_DECODE_LEN)
        self.config = config
        self.codec = vocabularies.build_codec(spec.vocab_config)
        needed_rows = vocabularies.vocabulary_size(self.codec)
        if net_config.vocab_size < needed_rows:
            raise ValueError(f"the model has {net_config.vocab_size} embedding rows but vocabulary "
                             f"{spec.vocab_config} needs {needed_rows}")
        self.spectrogram_config = net_config.spectrogram_config or spectrograms.SpectrogramConfig()
        self.params = jax.device_put(params)
        self.info = dict(info or {})
        module = model.module

        def predict(params, frames, rng):
            return decoding.decode(module, params, frames, max_decode_len=config.max_decode_len,
                                   temperature=config.temperature, top_k=config.top_k,
                                   rng=rng if config.temperature > 0 else None, return_num_steps=True)

        self._predict = jax.jit(predict)
        self._batches_run = 0

    # ----- properties -----
    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def input_frames(self) -> int:
        return self.spec.input_frames

    @property
    def hop_width(self) -> int:
        return self.spectrogram_config.hop_width

    @property
    def sample_rate(self) -> int:
        return self.spectrogram_config.sample_rate

    @property
    def segment_seconds(self) -> float:
        return self.input_frames / self.spectrogram_config.frames_per_second

    def describe(self) -> dict[str, Any]:
        """Model facts for /healthz and logs."""
        from mt3.models import models

        cfg = self.model.module.config
        return {**self.info, "vocab_velocity_bins": self.spec.vocab_config.num_velocity_bins,
                "include_ties": self.spec.include_ties, "input_frames": self.input_frames,
                "segment_seconds": self.segment_seconds, "batch_size": self.batch_size,
                "max_decode_len": self.config.max_decode_len, "temperature": self.config.temperature,
                "top_k": self.config.top_k, "emb_dim": cfg.emb_dim, "num_encoder_layers": cfg.num_encoder_layers,
                "num_decoder_layers": cfg.num_decoder_layers,
                "num_params": models.count_params(self.params)}

    # ----- segmenting -----
    def segment_audio(self, samples: np.ndarray) -> _Segments:
        """Mono samples at the model's rate -> consecutive segments of `input_frames` frames (last zero-padded)."""
        samples = audio.normalize_peak(np.asarray(samples, np.float32), self.config.input_peak_db)
        frames, frame_times = spectrograms.split_audio(samples, self.spectrogram_config)
        length = self.input_frames
        num = -(-len(frames) // length)
        padded = np.zeros((num * length, frames.shape[1]), np.float32)
        padded[: len(frames)] = frames
        return _Segments(frames=padded.reshape(num, length, frames.shape[1]),
                         start_times=frame_times[::length].astype(np.float64),
                         audio_seconds=len(samples) / self.sample_rate)

    # ----- decoding -----
    def predict_batch(self, frames: np.ndarray, allowed: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """Decodes up to `batch_size` segments [b, L, hop]; returns (ids [b, max_decode_len], decoder steps run).

        `allowed` (bool [b, vocab_size]) restricts each row's tokens (greedy only; `program_consistency`).
        Rows are padded with silent segments to one of few shapes so the jitted decoder is reused: the batch size
        for the fixed-shape loop, the next power of two (at most the batch size) for the compacting one.
        """
        import jax

        from mt3.models import decoding

        frames = np.asarray(frames, np.float32)
        rows = frames.shape[0]
        if not 0 < rows <= self.batch_size or frames.shape[1:] != (self.input_frames, self.hop_width):
            raise ValueError(f"predict_batch takes [1..{self.batch_size}, {self.input_frames}, {self.hop_width}] "
                             f"frames, got {frames.shape}")
        greedy = self.config.temperature == 0.0
        if allowed is not None and not greedy:
            raise ValueError("a token mask (allowed) needs greedy decoding (temperature 0)")
        compact = greedy and (self.config.compact_decoding or allowed is not None)
        padded = min(decoding.next_power_of_two(rows), self.batch_size) if compact else self.batch_size
        if rows < padded:
            frames = np.concatenate([frames, np.zeros((padded - rows, *frames.shape[1:]), np.float32)])
            if allowed is not None:
                allowed = np.concatenate([allowed, np.ones((padded - rows, allowed.shape[1]), bool)])
        if compact:
            ids, steps = decoding.greedy_decode_compacting(self.model.module, self.params, frames,
                                                           max_decode_len=self.config.max_decode_len,
                                                           allowed=allowed)
            return ids[:rows], steps
        rng = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), self._batches_run)
        self._batches_run += 1
        ids, steps = self._predict(self.params, frames, rng)
        return np.asarray(ids)[:rows], int(steps)

    def ids_to_tokens(self, ids: np.ndarray) -> np.ndarray:
        """One row of vocabulary ids -> codec indices trimmed at the first EOS (MT3's postprocessing)."""
        return vocabularies.trim_eos(vocabularies.decode_tokens(ids, self.codec.num_classes))

    def decode_segments(self, frames: Sequence[np.ndarray] | np.ndarray, *, progress: bool = False,
                        desc: str = "decoding", allowed: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """Codec tokens (trimmed at EOS) for every segment, decoded in batches of `batch_size`; `allowed` gives
        each segment's token mask (bool [vocab_size]) for a constrained greedy decode."""
        from tqdm import tqdm

        out: list[np.ndarray] = []
        total = len(frames)
        with tqdm(total=total, desc=desc, unit="seg", disable=not progress) as bar:
            for start in range(0, total, self.batch_size):
                chunk = np.stack([np.asarray(f, np.float32) for f in frames[start:start + self.batch_size]])
                mask = None if allowed is None else np.stack(allowed[start:start + self.batch_size])
                ids, _ = self.predict_batch(chunk) if mask is None else self.predict_batch(chunk, mask)
                out.extend(self.ids_to_tokens(row) for row in ids)
                bar.update(len(chunk))
        return out

    def stitch(self, tokens: Sequence[np.ndarray], start_times: Sequence[float], audio_seconds: float) -> Transcription:
        """Segment tokens -> one NoteSequence (`event_predictions_to_ns`; never raises on any token content)."""
        predictions = [{"est_tokens": np.asarray(t, np.int32), "start_time": float(s)}
                       for t, s in zip(tokens, start_times, strict=True)]
        result = metrics_utils.event_predictions_to_ns(predictions, self.codec, self.spec.encoding_spec)
        ns = result["est_ns"]
        duplicates = midi_io.remove_duplicate_notes(ns)
        ns.ticks_per_quarter = MIDI_TICKS_PER_QUARTER
        if not ns.tempos:
            ns.tempos.add(time=0.0, qpm=MIDI_QPM)
        ns.total_time = max([ns.total_time, *(n.end_time for n in ns.notes)])
        return Transcription(ns=ns, invalid_events=int(result["est_invalid_events"]),
                             dropped_events=int(result["est_dropped_events"]), num_segments=len(predictions),
                             audio_seconds=float(audio_seconds), decoded_tokens=int(sum(len(t) for t in tokens)),
                             duplicate_notes_removed=duplicates)

    def transcribe(self, samples: np.ndarray, *, progress: bool = False) -> Transcription:
        """Mono samples at 16 kHz -> Transcription."""
        return self.transcribe_many([samples], progress=progress)[0]

    def transcribe_many(self, audios: Sequence[np.ndarray], *, progress: bool = True,
                        desc: str = "transcribing") -> list[Transcription]:
        """Several files at once: their segments share batches (the last batch of one file is filled with the next
        file's segments), so many short files cost about as much as one long one. The config's instrument
        consistency options (`program_consistency`) apply per file."""
        segmented = [self.segment_audio(a) for a in audios]
        # digital silence (every sample 0, or none) has no notes: not decoded, so no model can invent any there
        counts = [len(s.frames) if np.any(np.asarray(a)) else 0 for a, s in zip(audios, segmented, strict=True)]
        frames = [seg for s, n in zip(segmented, counts, strict=True) for seg in s.frames[:n]]
        sets = [self.config.programs] * len(audios)
        if self.config.two_pass_programs and self.config.programs is None:
            first = self._decode_and_stitch(segmented, counts, frames, None, progress, f"{desc} (pass 1)")
            sets = [program_consistency.estimate_program_set(r.ns, self.config.min_program_share) for r in first]
            desc = f"{desc} (pass 2)"
        results = self._decode_and_stitch(segmented, counts, frames, sets, progress, desc)
        if self.config.reassign_programs != "none":
            for r in results:
                r.ns = program_consistency.reassign_programs(r.ns, self.config.reassign_programs)
        return results

    def _decode_and_stitch(self, segmented: list[_Segments], counts: list[int], frames: list[np.ndarray],
                           program_sets: list[tuple[int, ...] | None] | None, progress: bool,
                           desc: str) -> list[Transcription]:
        allowed = None
        if program_sets is not None and any(p is not None for p in program_sets):
            vocab = self.model.module.config.vocab_size
            masks = [program_consistency.allowed_ids(self.codec, p or (), vocab) for p in program_sets]
            allowed = [m for m, n in zip(masks, counts, strict=True) for _ in range(n)]
        tokens = self.decode_segments(frames, progress=progress, desc=desc, allowed=allowed)
        results, offset = [], 0
        for i, (s, n) in enumerate(zip(segmented, counts, strict=True)):
            results.append(self.stitch(tokens[offset:offset + n], s.start_times[:n], s.audio_seconds))
            if allowed is not None and program_sets[i]:
                results[-1].ns = program_consistency.restrict_to_set(results[-1].ns, program_sets[i])
            offset += n
        return results


# ---------------------------------------------------------------------------------------------------------------------
# loading a model directory written by `mt3 train`

INFER_GIN = "infer.gin"
_GIN_REGISTERED = False


def register_gin_configurables() -> None:
    """Registers this module's configurables with gin (idempotent): `inference.InferenceConfig`."""
    global _GIN_REGISTERED
    if _GIN_REGISTERED:
        return
    import gin

    with gin.unlock_config():  # a finalized config (e.g. after training in this process) locks registration
        gin.external_configurable(InferenceConfig, module="inference")
    _GIN_REGISTERED = True


def checkpoint_steps(model_dir: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints under MODEL_DIR/checkpoints (orbax renames a step dir when it is done)."""
    from mt3 import checkpoints

    directory = checkpoints.checkpoint_dir(model_dir)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def restore_params(model_dir: str | os.PathLike, model, step: int | None = None) -> tuple[Any, int]:
    """(params on the default device, step) from the orbax checkpoint at `step` (default: the latest).

    Only the parameters are read (orbax partial restore): the optimizer state, often as large again, stays on disk.
    """
    import jax
    import orbax.checkpoint as ocp

    from mt3 import checkpoints, pretrained

    if pretrained.is_bundled_model(model_dir):  # the package's own model: bf16 arrays + model.json, not orbax
        params, bundled_step = pretrained.load_params(model_dir, model.abstract_params())
        if step is not None and int(step) != bundled_step:
            raise InputError(model_dir, f"bundled model holds step {bundled_step} only, not {step}")
        return jax.device_put(params), bundled_step
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          {"params": model.abstract_params()})
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), target)

    def restore_step(s: int):
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            return checkpointer.restore(checkpoints.checkpoint_dir(model_dir) / str(s), args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)))

    # the newest step that restores; a cut-short one is named on one line and skipped (`checkpoints.restore_newest`)
    restored, step, _ = checkpoints.restore_newest(model_dir, restore_step, step=step, warn=_warn_bad_checkpoint)
    return restored["state"]["params"], step


def _warn_bad_checkpoint(bad) -> None:
    import sys

    print(f"mt3: warning: {bad.describe()}; trying an older one", file=sys.stderr, flush=True)


def spec_from_gin(model) -> OutputSpec:
    """The vocabulary / ties / segment length a model dir was trained with, from its config.gin macros.

    `mt3 train` presets record NUM_VELOCITY_BINS, USE_TIES, ONSETS_ONLY and TASK_FEATURE_LENGTHS; without them the
    embedding rows decide (1664 = ismir2021, else MT3), as MT3's checkpoints do.
    """
    from mt3 import gin_utils

    default = OutputSpec.for_vocab("ismir2021" if model.module.config.vocab_size == 1664 else "mt3")
    bins = gin_utils.query_macro("NUM_VELOCITY_BINS", default.vocab_config.num_velocity_bins)
    lengths = gin_utils.query_macro("TASK_FEATURE_LENGTHS", None) or {}
    return OutputSpec(vocab_config=vocabularies.VocabularyConfig(num_velocity_bins=int(bins)),
                      include_ties=bool(gin_utils.query_macro("USE_TIES", default.include_ties)),
                      input_frames=int(lengths.get("inputs", default.input_frames)),
                      onsets_only=bool(gin_utils.query_macro("ONSETS_ONLY", False)))


def parse_model_dir_gin(model_dir: str | os.PathLike, gin_files: Sequence[str | os.PathLike] = (),
                        gin_bindings: Sequence[str] = (), *, role_gin: str = INFER_GIN):
    """Parses MODEL_DIR/config.gin, then the role's gin file (infer.gin / eval.gin), then the user's files and
    bindings (later wins). Returns the model object gin builds from the MODEL macro."""
    import gin

    from mt3 import gin_utils

    model_dir = Path(model_dir)
    config_gin = model_dir / "config.gin"
    if not model_dir.is_dir():
        raise InputError(model_dir, "checkpoint directory not found (pass --checkpoint MODEL_DIR from `mt3 train`)")
    if not config_gin.is_file():
        raise InputError(model_dir, "no config.gin in the checkpoint directory (is it a model dir from `mt3 train`?)")
    register_gin_configurables()
    given = {Path(f).name for f in gin_files}
    files = [config_gin, *([role_gin] if role_gin and role_gin not in given else []), *gin_files]
    gin_utils.parse_gin_flags(files, list(gin_bindings), finalize=False,
                              skip_unknown=gin_utils.TRAINING_ONLY_CONFIGURABLES)  # no training loop needed
    try:
        reference = gin.query_parameter("MODEL/macro.value")
        model = reference.scoped_configurable_fn() if hasattr(reference, "scoped_configurable_fn") else reference
    except (ValueError, TypeError) as err:
        raise InputError(config_gin, f"cannot build the model from the MODEL macro ({err})") from err
    return model


def resolved_input_peak(config: InferenceConfig | None) -> float | None:
    """The peak (dBFS) a loaded model presents its input at, or None when it decodes the input as given."""
    peak = getattr(config, "input_peak_db", None)
    return float(peak) if isinstance(peak, (int, float)) and not isinstance(peak, bool) else None


def with_model_defaults(config: InferenceConfig) -> InferenceConfig:
    """`config` with the model-dependent defaults resolved from the parsed model config: decode length, input peak."""
    return with_model_input_peak(with_model_decode_length(config))


def with_model_input_peak(config: InferenceConfig) -> InferenceConfig:
    """`config` with input_peak_db 'model' replaced by the parsed model config's INPUT_PEAK_DB macro (None if absent:
    MT3's released models and models trained before the macro existed decode their input as given)."""
    if config.input_peak_db != "model":
        return config
    from mt3 import gin_utils

    return dataclasses.replace(config, input_peak_db=gin_utils.query_macro("INPUT_PEAK_DB", None))


def with_model_decode_length(config: InferenceConfig) -> InferenceConfig:
    """`config` with max_decode_len None replaced by the target length the parsed model config trained with
    (its TASK_FEATURE_LENGTHS['targets']), or MT3's 1024 when the config names none."""
    if config.max_decode_len is not None:
        return config
    from mt3 import gin_utils

    lengths = gin_utils.query_macro("TASK_FEATURE_LENGTHS", None) or {}
    return dataclasses.replace(config, max_decode_len=int(lengths.get("targets", DEFAULT_MAX_DECODE_LEN)))


def load_inference_model(model_dir: str | os.PathLike, *, gin_files: Sequence[str | os.PathLike] = (),
                         gin_bindings: Sequence[str] = (), step: int | None = None, role_gin: str = INFER_GIN,
                         config: InferenceConfig | None = None, batch_size: int | None = None) -> InferenceModel:
    """An InferenceModel from a model dir of `mt3 train`: its config.gin rebuilds the model and vocabulary settings,
    gin/infer.gin (+ extra --gin_file / --gin.X bindings) sets decoding, and orbax restores the parameters.

    `config` (if given) replaces the gin-bound InferenceConfig; `batch_size` (a command-line flag) overrides its batch.
    """
    import gin

    compilation.enable_compilation_cache()
    model = parse_model_dir_gin(model_dir, gin_files, gin_bindings, role_gin=role_gin)
    spec = spec_from_gin(model)
    if config is None:
        try:
            config = gin.get_configurable("inference.InferenceConfig")()
        except (ValueError, TypeError) as err:
            raise InputError(None, f"bad inference configuration: {err}") from err
    if batch_size is not None:
        config = dataclasses.replace(config, batch_size=batch_size)
    config = with_model_defaults(config)
    params, restored_step = restore_params(model_dir, model, step)
    info = {"model_dir": os.fspath(Path(model_dir).resolve()), "step": restored_step}
    return InferenceModel(model, params, spec=spec, config=config, info=info)
