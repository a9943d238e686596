"""Audio -> segments -> batched KV-cached decoding -> stitched NoteSequence -> multitrack MIDI.

MT3's inference recipe (REFERENCE §6): load mono 16 kHz audio, cut it into 128-sample frames (`split_audio`), group
the frames into consecutive non-overlapping segments of the model's input length (256 frames for the MT3 vocabulary,
512 for ismir2021; the last one zero-padded), decode every segment independently, then stitch the segments' tokens in
time order with one decoding state (`metrics_utils.event_predictions_to_ns`; ties carry notes across boundaries).

Why a class: the jitted decoder is compiled once per (batch, input length, decode length) and reused for every file
and request, so shapes are static: segments of one or MANY files are packed into batches of exactly `batch_size`
rows (the last batch padded with silent segments whose outputs are discarded). `mt3 transcribe` (files in and out:
`mt3.transcription`), `mt3 eval` and `mt3 serve` all go through `InferenceModel`; `mt3.model_loading` builds one
from a model dir.

No TensorFlow and no seqio here (GPU hosts without TF run this); JAX/note_seq are imported when used.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from mt3 import (
    allocator,
    audio,
    metrics_utils,
    midi_io,
    note_sequences,
    program_consistency,
    spectrograms,
    vocabularies,
)
from mt3.training import compilation

# Ticks per quarter note of the MIDI files we write. At the default 120 qpm this is 1000 ticks per second, so times on
# the codec's 10 ms grid survive a MIDI round trip exactly (note_seq's default 220 would move them by up to 1.1 ms).
MIDI_TICKS_PER_QUARTER = 500
MIDI_QPM = 120.0


DEFAULT_MAX_DECODE_LEN = 1024  # MT3's, for a model whose config names no target length
DECODER_RUNTIMES = ("auto", "xla", "onnxruntime")  # InferenceConfig.decoder_runtime

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
    min_confidence: notes whose confidence (`mt3.note_confidence`: the product of their onset tokens' probabilities,
    greedy compacting decoder only) is below it are dropped after stitching (0: keep all).
    `programs_mode` says how a user set applies: 'move' (default) decodes freely and moves other programs' notes to
    the nearest allowed program; 'mask' forbids other program tokens in the decoder (greedy only; the model then
    drops notes it would have given them). Each file's `Transcription.program_report` says what was done.

    input_peak_db: each file is peak-normalised to this dBFS before framing (None: as given, MT3's behaviour;
    'model': the INPUT_PEAK_DB macro of the model's config.gin, i.e. the level its training audio had, else None).
    Why: a model sees a file's level through the log-mel, and ours train on mixes normalised to a -1 dBFS peak; a
    recording at -30 dB then reaches it as the same music, not as near-silence. Files below -80 dBFS stay as given.

    decode_mask (greedy only; `mt3.models.event_mask`): 'note_state' masks, at every decoding step, the tokens the note
    state of the segment so far makes invalid (a note-off of a pitch not sounding, a second tie, an onset of a
    sounding pitch, ...); 'invalid' only what the note decoder would reject; 'none' (MT3's behaviour) masks nothing.

    decoder_runtime: 'onnxruntime' runs the greedy compacting decoder's step as one ONNX graph
    (`mt3.models.ort_decoder`): ONNX Runtime's kernels take 2-3x less CPU at the decoder's small batch rows, and its
    graph has symbolic shapes, so nothing is traced per (batch, cache length). Same greedy rule; its float32 sums run
    in another order (logits within ~1e-6), so a token can differ only where the two best logits are that close
    (docs/decoding_speed.md). The encoder stays in JAX. 'xla' runs the step compiled by XLA. 'auto' (default) takes
    onnxruntime where it applies (greedy, compact, no decode_mask, a float32 model, JAX on the CPU, onnxruntime
    installed; `InferenceModel.decoder_runtime` says which) and xla elsewhere (sampling, decode masks, accelerators).
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
    programs_mode: str = "move"
    min_confidence: float = 0.0
    input_peak_db: float | str | None = "model"
    decode_mask: str = "none"
    decoder_runtime: str = "auto"

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
        if not 0.0 <= self.min_confidence < 1.0:
            raise ValueError(f"InferenceConfig.min_confidence must be in [0, 1), got {self.min_confidence!r}")
        if self.programs_mode not in program_consistency.PROGRAMS_MODES:
            raise ValueError(f"InferenceConfig.programs_mode must be one of {program_consistency.PROGRAMS_MODES}, "
                             f"got {self.programs_mode!r}")
        from mt3.models import event_mask

        if self.decode_mask not in event_mask.MODES:
            raise ValueError(f"InferenceConfig.decode_mask must be one of {event_mask.MODES}, got {self.decode_mask!r}")
        if self.decode_mask != "none" and self.temperature > 0:
            raise ValueError("InferenceConfig.decode_mask masks greedy decoding; set temperature = 0")
        if self.decoder_runtime not in DECODER_RUNTIMES:
            raise ValueError(f"InferenceConfig.decoder_runtime must be one of {DECODER_RUNTIMES}, got "
                             f"{self.decoder_runtime!r}")
        if self.decoder_runtime == "onnxruntime" and (self.temperature > 0 or not self.compact_decoding
                                              or self.decode_mask != "none"):
            raise ValueError(f"InferenceConfig.decoder_runtime = {self.decoder_runtime!r} runs greedy compacting "
                             "decoding without a decode mask: set temperature = 0, compact_decoding = True, "
                             "decode_mask = 'none'")
        if self.masks_decoder and self.temperature > 0:
            raise ValueError("InferenceConfig.programs (programs_mode 'mask') / two_pass_programs constrain greedy "
                             "decoding; set temperature = 0")

    @property
    def constrains_programs(self) -> bool:
        return self.programs is not None or self.two_pass_programs

    @property
    def masks_decoder(self) -> bool:
        """Whether decoding uses a program mask: a user set in 'mask' mode, or two-pass's pass 2."""
        return (self.programs is not None and self.programs_mode == "mask") or self.two_pass_programs


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
    program_report: Any = None  # `program_consistency.ProgramReport` when an instrument option is on
    confidence: Any = None  # `note_confidence.NoteConfidence` (note -> 0..1) when decoded with probabilities
    low_confidence_dropped: int = 0  # notes below InferenceConfig.min_confidence, removed
    duplicate_notes_removed: int = 0  # exact duplicates dropped after stitching (`midi_io.remove_duplicate_notes`)

    def notes(self) -> list[dict[str, Any]]:
        return midi_io.notes_to_dicts(self.ns, confidence=self.confidence)


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
        self._step_mask = None
        if config.decode_mask != "none":
            from mt3.models import event_mask

            self._step_mask = event_mask.NoteStateMask.for_codec(
                self.codec, net_config.vocab_size, include_ties=spec.include_ties, onsets_only=spec.onsets_only,
                mode=config.decode_mask)

    # ----- properties -----
    @property
    def decoder_runtime(self) -> str:
        """'xla' or 'onnxruntime': what runs this model's greedy compacting decoder ('auto' resolved, see
        InferenceConfig). Derived from `config` on every read, never cached: callers replace `config` on a copy."""
        config = self.config
        if config.decoder_runtime != "auto":
            return config.decoder_runtime
        if config.temperature > 0 or not config.compact_decoding or config.decode_mask != "none":
            return "xla"
        from mt3.models import ort_decoder

        return "xla" if ort_decoder.unusable_reason(self.model.module.config) else "onnxruntime"

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
                "num_params": models.count_params(self.params), "input_peak_db": self.config.input_peak_db,
                "programs": None if self.config.programs is None else list(self.config.programs),
                "two_pass_programs": self.config.two_pass_programs,
                "reassign_programs": self.config.reassign_programs, "programs_mode": self.config.programs_mode,
                "min_confidence": self.config.min_confidence, "decode_mask": self.config.decode_mask}

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
    def _ort_decoder(self):
        """The ONNX Runtime decoder of this model (`decoder_runtime` 'onnxruntime'), its session built on first use."""
        if getattr(self, "_ort", None) is None:
            from mt3.models import ort_decoder

            self._ort = ort_decoder.OrtDecoder(self.model.module, self.params)
        return self._ort

    def predict_batch(self, frames: np.ndarray, allowed: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """Decodes up to `batch_size` segments [b, L, hop]; returns (ids [b, max_decode_len], decoder steps run)."""
        ids, steps, _ = self.predict_batch_scored(frames, allowed)
        return ids, steps

    def predict_batch_scored(self, frames: np.ndarray, allowed: np.ndarray | None = None
                             ) -> tuple[np.ndarray, int, np.ndarray | None]:
        """`predict_batch` plus each chosen id's log-probability [b, max_decode_len] (the greedy compacting decoder;
        None from the fixed-shape or sampling loop). The ids are the same either way.

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
        compact = greedy and (self.config.compact_decoding or allowed is not None or self._step_mask is not None)
        padded = min(decoding.next_power_of_two(rows), self.batch_size) if compact else self.batch_size
        if rows < padded:
            frames = np.concatenate([frames, np.zeros((padded - rows, *frames.shape[1:]), np.float32)])
            if allowed is not None:
                allowed = np.concatenate([allowed, np.ones((padded - rows, allowed.shape[1]), bool)])
        if compact:
            decode = (self._ort_decoder().greedy_decode_compacting if self.decoder_runtime == "onnxruntime"
                      else functools.partial(decoding.greedy_decode_compacting, self.model.module, self.params))
            ids, steps, log_probs = decode(frames, max_decode_len=self.config.max_decode_len, allowed=allowed,
                                           return_log_probs=True, step_mask=self._step_mask)
            return ids[:rows], steps, log_probs[:rows]
        rng = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), self._batches_run)
        self._batches_run += 1
        ids, steps = self._predict(self.params, frames, rng)
        return np.asarray(ids)[:rows], int(steps), None

    def ids_to_tokens(self, ids: np.ndarray) -> np.ndarray:
        """One row of vocabulary ids -> codec indices trimmed at the first EOS (MT3's postprocessing)."""
        return vocabularies.trim_eos(vocabularies.decode_tokens(ids, self.codec.num_classes))

    def decode_segments(self, frames: Sequence[np.ndarray] | np.ndarray, *, progress: bool = False,
                        desc: str = "decoding", allowed: Sequence[np.ndarray] | None = None,
                        seconds: Sequence[float] | None = None, log_probs: list | None = None) -> list[np.ndarray]:
        """Codec tokens (trimmed at EOS) for every segment, decoded in batches of `batch_size` (a list given as
        `log_probs` receives each segment's tokens' log-probabilities, or None per segment); `allowed` gives
        each segment's token mask (bool [vocab_size]) for a constrained greedy decode. The progress bar counts seconds
        of audio (`seconds` per segment; default a full segment each), the unit a user knows their files in."""
        from tqdm import tqdm

        out: list[np.ndarray] = []
        total = len(frames)
        seconds = [self.segment_seconds] * total if seconds is None else list(seconds)
        with tqdm(total=round(sum(seconds), 1), desc=desc, unit="s", disable=not progress,
                  bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio "
                             "[{elapsed}<{remaining}, {rate_fmt}]") as bar:
            for start in range(0, total, self.batch_size):
                chunk = np.stack([np.asarray(f, np.float32) for f in frames[start:start + self.batch_size]])
                mask = None if allowed is None else np.stack(allowed[start:start + self.batch_size])
                ids, _, scores = self.predict_batch_scored(chunk, mask)
                allocator.release_free_memory()  # the batch's freed caches back to the OS (docs/decoding_speed.md)
                for i, row in enumerate(ids):
                    out.append(self.ids_to_tokens(row))
                    if log_probs is not None:
                        log_probs.append(None if scores is None else scores[i, :len(out[-1])])
                bar.update(min(sum(seconds[start:start + self.batch_size]), bar.total - bar.n))
        return out

    def stitch(self, tokens: Sequence[np.ndarray], start_times: Sequence[float], audio_seconds: float,
               log_probs: Sequence[np.ndarray | None] | None = None) -> Transcription:
        """Segment tokens -> one NoteSequence (`event_predictions_to_ns`; never raises on any token content). With the
        tokens' `log_probs`, each note gets a confidence (`note_confidence`) and min_confidence applies."""
        predictions = [{"est_tokens": np.asarray(t, np.int32), "start_time": float(s)}
                       for t, s in zip(tokens, start_times, strict=True)]
        result = metrics_utils.event_predictions_to_ns(predictions, self.codec, self.spec.encoding_spec)
        ns = result["est_ns"]
        duplicates = midi_io.remove_duplicate_notes(ns)
        if self.spec.vocab_config.num_velocity_bins == 1:  # one bin says "a note", not how loud: MT3's default, not 127
            for note in ns.notes:
                note.velocity = note_sequences.DEFAULT_VELOCITY
        ns.ticks_per_quarter = MIDI_TICKS_PER_QUARTER
        if not ns.tempos:
            ns.tempos.add(time=0.0, qpm=MIDI_QPM)
        confidence, low = None, 0
        if log_probs is not None and all(lp is not None for lp in log_probs):
            from mt3 import note_confidence

            snapped = [metrics_utils.segment_start_time(s, self.codec) for s in start_times]
            confidence = note_confidence.NoteConfidence(note_confidence.onset_token_log_probs(
                list(zip(tokens, log_probs, snapped, strict=True)), self.codec, include_ties=self.spec.include_ties))
            low = note_confidence.drop_below(ns, confidence, self.config.min_confidence)
        ns.total_time = max([ns.total_time, *(n.end_time for n in ns.notes)])
        return Transcription(ns=ns, invalid_events=int(result["est_invalid_events"]),
                             dropped_events=int(result["est_dropped_events"]), num_segments=len(predictions),
                             audio_seconds=float(audio_seconds), decoded_tokens=int(sum(len(t) for t in tokens)),
                             duplicate_notes_removed=duplicates, confidence=confidence, low_confidence_dropped=low)

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
        first: list = [None] * len(audios)
        if self.first_pass_programs():
            first = self._decode_and_stitch(segmented, counts, frames, None, progress, f"{desc} (pass 1)")
            sets = [self.estimate_programs(r.ns) for r in first]
            desc = f"{desc} (pass 2)"
        masks = [self.masked_programs(p) for p in sets]
        results = self._decode_and_stitch(segmented, counts, frames, masks if any(m is not None for m in masks)
                                          else None, progress, desc)
        for r, programs, pass1 in zip(results, sets, first, strict=True):
            self.finish_programs(r, programs, first_pass=pass1)
        return results

    # ----- instrument consistency (`program_consistency`), shared with the server's per-request path -----
    def first_pass_programs(self) -> bool:
        """Whether a file needs a first, unconstrained pass to find its program set (two-pass, no user set)."""
        return self.config.two_pass_programs and self.config.programs is None

    def estimate_programs(self, ns) -> tuple[int, ...]:
        """The program set a first pass's notes give (those holding >= min_program_share of the pitched notes)."""
        return program_consistency.estimate_program_set(ns, self.config.min_program_share)

    def program_mask(self, programs: Sequence[int] | None) -> np.ndarray:
        """bool [vocab_size]: the decoder mask allowing only `programs` (None or empty: everything)."""
        return program_consistency.allowed_ids(self.codec, programs or (), self.model.module.config.vocab_size)

    def masked_programs(self, programs: Sequence[int] | None) -> tuple[int, ...] | None:
        """The program set the decoder is masked to for a file whose set is `programs` (None: no mask). A user set
        masks only in programs_mode 'mask'; two-pass's set (pass 1's programs) always does."""
        if programs is None or (self.config.programs is not None and self.config.programs_mode != "mask"):
            return None
        return tuple(programs)

    def finish_programs(self, result: Transcription, programs: Sequence[int] | None, *,
                        first_pass: Transcription | None = None) -> None:
        """A decoded file's notes moved into its program set (if any), then reassigned as the config says; what was
        done goes into `result.program_report` (`first_pass`: two-pass's pass 1, to count what pass 2 lost)."""
        if programs is None and self.config.reassign_programs == "none":
            return
        result.ns, result.program_report = program_consistency.apply_program_options(
            result.ns, programs=programs, source="--programs" if self.config.programs is not None else "two-pass",
            masked=self.masked_programs(programs) is not None, reassign=self.config.reassign_programs,
            first_pass_ns=None if first_pass is None else first_pass.ns)

    def _decode_and_stitch(self, segmented: list[_Segments], counts: list[int], frames: list[np.ndarray],
                           program_sets: list[tuple[int, ...] | None] | None, progress: bool,
                           desc: str) -> list[Transcription]:
        allowed = None
        if program_sets is not None and any(p is not None for p in program_sets):
            masks = [self.program_mask(p) for p in program_sets]
            allowed = [m for m, n in zip(masks, counts, strict=True) for _ in range(n)]
        seconds = [min(self.segment_seconds, s.audio_seconds - t) for s, n in zip(segmented, counts, strict=True)
                   for t in s.start_times[:n]]
        log_probs: list = []
        tokens = self.decode_segments(frames, progress=progress, desc=desc, allowed=allowed, seconds=seconds,
                                      log_probs=log_probs)
        results, offset = [], 0
        for s, n in zip(segmented, counts, strict=True):
            results.append(self.stitch(tokens[offset:offset + n], s.start_times[:n], s.audio_seconds,
                                       log_probs[offset:offset + n]))
            offset += n
        return results
