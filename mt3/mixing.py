"""Audio mixing of training examples (MT3's `mix_transcription_examples`, the recipe of Gardner et al. and of the
ISMIR 2022 multi-instrument follow-ups): the waveforms of up to `max_examples_per_mix` training crops are summed and
their notes merged, so the same renders yield an unbounded supply of new mixtures.

Why merge at the note level instead of splicing token streams: the targets of a mix must be exactly what the
tokenizer would produce for the summed audio (tie section, event order, redundant-state removal), so each crop's notes
are cut to its window, moved onto one shared time axis, merged, and tokenized once. A "mix" of one crop goes through the
same path and reproduces `track_examples.segment_ids` token for token (tested), which is what makes the merged targets
trustworthy.

Plain numpy; `preprocessors.tokenize_transcription_example` calls `mixed_training_examples` on a small group of
records when `MixConfig.max_examples_per_mix > 1`. Off by default, as in MT3's presets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from mt3 import note_sequences
from mt3.data import track_examples, track_tokens


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """max_examples_per_mix: up to this many crops summed into one example (1 = off, MT3's presets).
    mix_probability: chance that an example is a mix at all (otherwise the crop alone, as without mixing).
    records_per_group: tracks read together; partners are drawn from the other tracks of the group.
    gain_db_range: each crop is scaled by a random gain in this range (dB) before summing; 0 disables it.
    seed: of the record shuffle that forms the groups."""

    max_examples_per_mix: int = 1
    mix_probability: float = 0.5
    records_per_group: int = 4
    gain_db_range: float = 6.0
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.max_examples_per_mix, int) or self.max_examples_per_mix < 1:
            raise ValueError(f"MixConfig.max_examples_per_mix must be an int >= 1, got {self.max_examples_per_mix!r}")
        if not 0.0 <= self.mix_probability <= 1.0:
            raise ValueError(f"MixConfig.mix_probability must be in [0, 1], got {self.mix_probability!r}")
        if not isinstance(self.records_per_group, int) or self.records_per_group < 1:
            raise ValueError(f"MixConfig.records_per_group must be an int >= 1, got {self.records_per_group!r}")
        if self.gain_db_range < 0:
            raise ValueError(f"MixConfig.gain_db_range must be >= 0, got {self.gain_db_range!r}")

    @property
    def enabled(self) -> bool:
        return self.max_examples_per_mix > 1 and self.mix_probability > 0


@dataclasses.dataclass(frozen=True)
class Crop:
    """Frames [start, end) of one tokenized track."""

    track: track_examples.Track
    start: int
    end: int


def window_notes(ns, start_time: float, end_time: float, offset: float, margin: float = 1.0) -> list:
    """(start, end, note) of the notes of `ns` near [start_time, end_time), times moved by `offset`.

    Notes that began before the window are kept whole: on the shared time axis they start before the mix's first frame,
    which is what puts them into the tie section. Notes that ended up to `margin` seconds before the window are kept
    too, because whether they still sound at the first frame is decided by the tokenizer's 10 ms quantisation, not by
    float comparison here; notes that end before the first frame produce no targets."""
    kept = []
    for note in ns.notes:
        if note.start_time >= end_time or max(note.end_time, note.start_time) <= start_time - margin:
            continue
        kept.append((note.start_time + offset, note.end_time + offset, note))
    return kept


def mix_crops(crops: Sequence[Crop], config: track_examples.TokenizeConfig, gains: Sequence[float] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(frames [L, hop] f32, target ids with EOS) of the summed crops with their merged notes."""
    if not crops:
        raise ValueError("mix_crops needs at least one crop")
    gains = [1.0] * len(crops) if gains is None else list(gains)
    spec = config.spectrogram_config
    length = max(c.end - c.start for c in crops)
    frames = np.zeros((length, spec.hop_width), np.float32)
    # One shared time axis: every crop's window starts at time `anchor`, late enough that notes which began before
    # their window keep non-negative times.
    anchor = max(float(c.track.frame_times[c.start]) for c in crops)
    merged = note_sequences._new_note_sequence()
    for crop, gain in zip(crops, gains, strict=True):
        frames[: crop.end - crop.start] += gain * crop.track.frames[crop.start:crop.end]
        t0 = float(crop.track.frame_times[crop.start])
        t1 = t0 + (crop.end - crop.start) / spec.frames_per_second
        for start, end, note in window_notes(crop.track.sequence, t0, t1, anchor - t0):
            merged.notes.add(pitch=note.pitch, velocity=note.velocity, program=note.program, is_drum=note.is_drum,
                             instrument=note.instrument, start_time=start, end_time=end)
    merged.total_time = max((n.end_time for n in merged.notes), default=0.0)
    peak = float(np.max(np.abs(frames), initial=0.0))
    if peak > 1.0:  # keep the sum in the range real recordings have
        frames /= peak
    # One frame past the window, so events after it (offsets of notes that outlast the crop) index there and not
    # into the window's last frame.
    frame_times = anchor + np.arange(length + 1, dtype=np.float64) / spec.frames_per_second
    labels = merged
    if config.trim_overlapping_notes and not config.onsets_only:
        labels = note_sequences.trim_overlapping_notes(merged)
    tokens = track_tokens.tokenize_note_sequence(labels, frame_times, config.codec, config.encoding_spec,
                                                   mt3_compat=config.mt3_compat)
    track = track_examples.Track(frames=frames, frame_times=frame_times, tokens=tokens, sequence=merged)
    return frames, track_examples.segment_ids(track, 0, length, config)


def _crops_of(track: track_examples.Track, input_length: int, rng: np.random.Generator) -> list[Crop]:
    """MT3's training crops of one track (one random crop per 2000-frame chunk), as `training_examples` draws them."""
    crops = []
    n = len(track.frames)
    for chunk_start in range(0, n, track_examples.MAX_NUM_CACHED_FRAMES):
        chunk_len = min(track_examples.MAX_NUM_CACHED_FRAMES, n - chunk_start)
        start, end = track_examples.random_crop_bounds(chunk_len, input_length, rng)
        if end > start:
            crops.append(Crop(track, chunk_start + start, chunk_start + end))
    return crops


# Frames are 8 ms and target times are quantised on a 10 ms grid: moving a crop by a multiple of 5 frames (40 ms)
# keeps its notes' quantised times relative to the window exact.
_GRID_FRAMES = 5


def _aligned(partner: Crop, reference: Crop) -> Crop:
    """`partner` moved by at most 4 frames so that its start differs from `reference`'s by a multiple of 40 ms."""
    shift = (reference.start - partner.start) % _GRID_FRAMES
    start = partner.start + shift
    if start >= len(partner.track.frames):
        start -= _GRID_FRAMES
    start = max(start, 0)
    if (reference.start - start) % _GRID_FRAMES:  # a track shorter than 5 frames: nothing to align, use it as is
        return partner
    return Crop(partner.track, start, min(start + (partner.end - partner.start), len(partner.track.frames)))


def mixed_training_examples(tracks: Sequence[track_examples.Track], config: track_examples.TokenizeConfig,
                            mix: MixConfig, input_length: int, rng: np.random.Generator
                            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One example per crop of every track, as without mixing; with probability `mix_probability` a crop is summed
    with 1..max_examples_per_mix-1 partner crops drawn from the *other* tracks of the group."""
    per_track = [_crops_of(t, input_length, rng) for t in tracks]
    for index, crops in enumerate(per_track):
        others = [c for j, cs in enumerate(per_track) if j != index for c in cs]
        for crop in crops:
            group = [crop]
            if others and mix.enabled and rng.random() < mix.mix_probability:
                partners = int(rng.integers(1, mix.max_examples_per_mix))
                picks = rng.choice(len(others), size=min(partners, len(others)), replace=False)
                group += [_aligned(others[int(p)], crop) for p in picks]
            if len(group) == 1:
                yield crop.track.frames[crop.start:crop.end], track_examples.segment_ids(
                    crop.track, crop.start, crop.end, config)
                continue
            gains = 10.0 ** (rng.uniform(-mix.gain_db_range, 0.0, size=len(group)) / 20.0)
            yield mix_crops(group, config, gains)

