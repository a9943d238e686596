"""Dense frame-level targets for the encoder's auxiliary heads: onset and frame (note activity) piano rolls.

Why: the token loss reaches the encoder only through cross-attention, a sparse and indirect signal; frame-level
onset/activity targets on the encoder output (the hybrid CTC/attention lesson from speech recognition, and Onsets and
Frames' heads) give every encoder frame a direct target. The heads are trained jointly with the token loss
(`models.ContinuousInputsEncoderDecoderModel(aux_frame_loss_weight=...)`) and unused at inference.

Why from the target tokens and not from the NoteSequence: a crop's target ids say exactly which notes the decoder must
write for that crop (tie section = notes sounding at its first frame, then onsets and offsets at 10 ms steps), whatever
made them: a plain crop, an audio mix of several tracks' crops, trimmed overlaps or dropped stems. Decoding them here
keeps the dense targets consistent with the token targets on every training path without touching those paths.

Rolls are at the encoder's frame rate (one row per input frame of `hop_width` samples: 125 frames/s for MT3's 128-sample
hop at 16 kHz), 128 MIDI pitches, instrument-agnostic, drums excluded. Onsets mark the frame an onset falls in; frames
mark [onset frame, offset frame), at least one frame. With the onsets-only encoding there are no offsets, so the frame
roll equals the onset roll. Times are those the decoder is taught: on the 10 ms grid counted from the step at or
before the crop's first frame, i.e. within -5..+15 ms (under two frames) of the audio. Plain numpy; the training
pipeline computes them only when its dataset config says so (`train.DatasetConfig.aux_frame_loss_weight` > 0, bound in
gin/train.gin to the AUX_FRAME_LOSS_WEIGHT macro that gives the model its loss weight): nothing is computed or carried
when the weight is 0.
"""

from __future__ import annotations

import numpy as np

from mt3 import event_codec, vocabularies

NUM_PITCHES = 128
# Model features the rolls travel under (after the feature converter): [B, L, 128] uint8, one row per encoder frame.
ONSETS_FEATURE = "aux_onsets"
FRAMES_FEATURE = "aux_frames"
FEATURES = (ONSETS_FEATURE, FRAMES_FEATURE)
# The gin macro of the auxiliary loss weight (gin/model_small.gin); the pipeline computes rolls iff it is > 0.
WEIGHT_MACRO = "AUX_FRAME_LOSS_WEIGHT"


def rolls_from_ids(ids: np.ndarray, num_frames: int, codec: event_codec.Codec, frames_per_second: float, *,
                   include_ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """(onsets, frames), each uint8 [num_frames, 128], of one crop's target ids (vocabulary ids, EOS optional).

    Decodes the way `note_sequences.decode_note_event` does, except that a tie-section pitch (a note sounding before
    the crop) is taken as active from frame 0 with no onset, since a lone crop has no previous segment. Events the
    decoder would reject (a note-off of an inactive pitch, unknown ids) are skipped; notes still sounding at the end
    last to the crop's end. Drum hits are excluded (they have no pitch activity to model).
    """
    onsets = np.zeros((num_frames, NUM_PITCHES), np.uint8)
    frames = np.zeros((num_frames, NUM_PITCHES), np.uint8)
    indices = vocabularies.trim_eos(vocabularies.decode_tokens(ids, codec.num_classes))
    active: dict[tuple[int, int], int] = {}  # (pitch, program) -> first frame
    in_tie_section = include_ties
    steps, time = 0, 0.0
    velocity, program = 1, 0
    saw_offsets = False

    def frame_of(t: float) -> int:
        return min(max(int(np.floor(t * frames_per_second + 1e-6)), 0), num_frames)

    def end_note(key: tuple[int, int], end_frame: int) -> None:
        start = active.pop(key)
        frames[start:max(end_frame, start + 1), key[0]] = 1

    for index in indices:
        if index < 0:
            continue
        event = codec.decode_event_index(int(index))
        if event.type == "shift":
            steps += event.value
            time = steps / codec.steps_per_second
            continue
        steps = 0
        if event.type == "velocity":
            velocity = event.value
        elif event.type == "program":
            program = event.value
        elif event.type == "tie":
            in_tie_section = False
        elif event.type == "pitch":
            key = (event.value, program)
            if in_tie_section:
                active.setdefault(key, 0)
                continue
            frame = frame_of(time)
            if velocity == 0:
                saw_offsets = True
                if key in active:
                    end_note(key, frame)
                continue
            if key in active:  # re-struck while sounding: the old note ends here (as the decoder does)
                end_note(key, frame)
            if frame < num_frames:
                onsets[frame, event.value] = 1
                active[key] = frame
    for key in list(active):
        end_note(key, num_frames)
    if not saw_offsets and not include_ties:  # onsets-only targets: no activity information beyond the onsets
        frames = onsets.copy()
    return onsets, frames


def batch_rolls(targets: np.ndarray, target_lengths: np.ndarray, num_frames: int, codec: event_codec.Codec,
                frames_per_second: float, *, include_ties: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rolls [k, num_frames, 128] uint8 of k padded target rows (as the training pipeline stacks them)."""
    rolls = [rolls_from_ids(row[:length], num_frames, codec, frames_per_second, include_ties=include_ties)
             for row, length in zip(targets, target_lengths, strict=True)]
    shape = (len(rolls), num_frames, NUM_PITCHES)
    onsets = np.stack([r[0] for r in rolls]) if rolls else np.zeros(shape, np.uint8)
    frames = np.stack([r[1] for r in rolls]) if rolls else np.zeros(shape, np.uint8)
    return onsets, frames

