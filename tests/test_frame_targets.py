"""Frame targets for the encoder's auxiliary heads (mt3.data.frame_targets) on real music: the rolls decoded from a
crop's
target ids agree with the crop's own notes at the encoder's frame rate, drums never enter them, and the training task
carries them only when the auxiliary loss is on (otherwise its examples are exactly what they were)."""

from __future__ import annotations

import helpers
import numpy as np
from data_fixtures import synth, windows, write_prepared_dataset

from mt3 import mixing, note_sequences, preprocessors
from mt3.data import frame_targets, track_examples, track_tokens

# Target times sit on the 10 ms grid counted from the step at or before the crop's first frame, so a decoded time is
# the true one moved by -5 ms (rounding) to +15 ms (rounding plus the crop start's offset from the grid).
EARLY, LATE = 0.006, 0.016

tracks = helpers.tracks  # the three tokenized real pieces (a module-scoped fixture)




def _reference(ns, t0: float, num_frames: int, fps: float):
    """From the notes themselves: (cells every note surely covers, cells a note may cover, cells an onset may land
    in, [(pitch, frames an onset surely inside the crop may land in)])."""
    sure = np.zeros((num_frames, 128), bool)
    maybe = np.zeros((num_frames, 128), bool)
    onset_maybe = np.zeros((num_frames, 128), bool)
    onset_ranges = []
    for note in ns.notes:
        if note.is_drum:
            continue
        on, off = note.start_time - t0, note.end_time - t0
        lo, hi = max(int(np.ceil((on + LATE) * fps)), 0), min(int(np.floor((off - EARLY) * fps)), num_frames)
        sure[lo:max(hi, lo), note.pitch] = True  # (a negative end would count from the back)
        lo, hi = max(int(np.floor((on - EARLY) * fps)), 0), min(int(np.ceil((off + LATE) * fps)), num_frames)
        maybe[lo:max(hi, lo), note.pitch] = True
        first, last = int(np.floor((on - EARLY) * fps)), int(np.floor((on + LATE) * fps))
        onset_maybe[max(first, 0):max(min(last + 1, num_frames), 0), note.pitch] = True
        if first >= 0 and last < num_frames:
            onset_ranges.append((note.pitch, slice(first, last + 1)))
    return sure, maybe, onset_maybe, onset_ranges


def test_rolls_from_ids_match_the_crops_notes(tracks):
    config, tracks = tracks
    fps = config.spectrogram_config.frames_per_second
    rng = np.random.default_rng(0)
    active_cells = onset_cells = 0
    for track in tracks:
        labels = note_sequences.trim_overlapping_notes(track.sequence)  # what the tokenizer saw
        for start in rng.integers(0, len(track.frames) - 64, 12):
            start = int(start)
            end = min(start + 256, len(track.frames))
            ids = track_examples.segment_ids(track, start, end, config)
            onsets, frames = frame_targets.rolls_from_ids(ids, end - start, config.codec, fps, include_ties=True)
            assert onsets.dtype == frames.dtype == np.uint8 and onsets.shape == (end - start, 128)
            t0 = float(track.frame_times[start])
            sure, maybe, onset_maybe, onset_ranges = _reference(labels, t0, end - start, fps)
            frames, onsets = frames.astype(bool), onsets.astype(bool)
            assert not np.any(sure & ~frames), "a cell the notes surely cover is missing"
            assert not np.any(frames & ~maybe), "an active cell no note covers"
            assert not np.any(onsets & ~onset_maybe), "an onset where no note starts"
            assert all(onsets[frames_, pitch].any() for pitch, frames_ in onset_ranges), "a note onset is missing"
            assert not np.any(onsets & ~frames), "an onset cell outside the note's activity"
            active_cells += int(frames.sum())
            onset_cells += int(onsets.sum())
    assert active_cells > 5000 and onset_cells > 300  # the crops held real music


def test_notes_sounding_before_the_crop_are_active_from_frame_zero_without_onset(tracks):
    config, tracks = tracks
    track = tracks[0]
    fps = config.spectrogram_config.frames_per_second
    note = max(track.sequence.notes, key=lambda n: n.end_time - n.start_time)  # a long note, cut in its middle
    start = int(np.searchsorted(track.frame_times, (note.start_time + note.end_time) / 2))
    ids = track_examples.segment_ids(track, start, start + 256, config)
    onsets, frames = frame_targets.rolls_from_ids(ids, 256, config.codec, fps, include_ties=True)
    assert frames[0, note.pitch] == 1 and onsets[0, note.pitch] == 0


def test_drums_never_enter_the_rolls(tracks):
    import note_seq

    config, tracks = tracks
    fps = config.spectrogram_config.frames_per_second
    track = tracks[2]
    with_drums = note_seq.NoteSequence()
    with_drums.CopyFrom(track.sequence)
    for i in range(40):  # kick and hi-hat every 250 ms, on pitches the piano also plays
        with_drums.notes.add(pitch=36 + 6 * (i % 2), start_time=0.25 * i, end_time=0.25 * i + 0.1, velocity=100,
                             is_drum=True, instrument=9)
    drum_track = track_examples.Track(track.frames, track.frame_times, track_tokens.tokenize_note_sequence(
        note_sequences.trim_overlapping_notes(with_drums), track.frame_times, config.codec, config.encoding_spec),
        with_drums)
    for start in (0, 300, 900):
        ids = track_examples.segment_ids(track, start, start + 256, config)
        drum_ids = track_examples.segment_ids(drum_track, start, start + 256, config)
        assert len(drum_ids) > len(ids)  # the drums are in the token targets ...
        plain = frame_targets.rolls_from_ids(ids, 256, config.codec, fps, include_ties=True)
        drummed = frame_targets.rolls_from_ids(drum_ids, 256, config.codec, fps, include_ties=True)
        for a, b in zip(plain, drummed, strict=True):  # ... and not in the rolls
            np.testing.assert_array_equal(a, b)


def test_onsets_only_targets_give_onset_frames(tracks):
    _, tracks = tracks
    config = track_examples.TokenizeConfig(onsets_only=True, include_ties=False)
    track = track_examples.tokenize_track(synth(tracks[1].sequence), tracks[1].sequence, config)
    ids = track_examples.segment_ids(track, 100, 356, config)
    onsets, frames = frame_targets.rolls_from_ids(ids, 256, config.codec, config.spectrogram_config.frames_per_second,
                                                  include_ties=False)
    assert onsets.sum() >= 5  # the quartet's notes starting in these 2 s
    np.testing.assert_array_equal(onsets, frames)


def test_batch_rolls_follow_each_rows_length(tracks):
    config, tracks = tracks
    fps = config.spectrogram_config.frames_per_second
    rows = [track_examples.segment_ids(tracks[0], s, s + 200, config) for s in (0, 400)]
    targets, lengths = preprocessors._stack_padded(rows, np.int32)
    onsets, frames = frame_targets.batch_rolls(targets, lengths, 256, config.codec, fps, include_ties=True)
    assert onsets.shape == frames.shape == (2, 256, 128)
    for i, row in enumerate(rows):
        expected = frame_targets.rolls_from_ids(row, 256, config.codec, fps, include_ties=True)
        np.testing.assert_array_equal(onsets[i], expected[0])
        np.testing.assert_array_equal(frames[i], expected[1])


def _task_examples(tmp_path, music21_sequences, monkeypatch, num: int = 10, **options):
    """Training examples of the local task with the pipeline options the trainer passes (`training_options`)."""
    import seqio

    from mt3 import datasets, preprocessors, tasks

    pieces = windows(music21_sequences["string_quartet"], 4, stride=4.0, length=9.0, prefix="t")
    if not (tmp_path / "local").exists():
        write_prepared_dataset(tmp_path, "local", {"train": pieces, "validation": pieces[:1], "test": pieces[:1]})
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    task = seqio.get_mixture_or_task(f"{tasks._MT3_PREFIXES['local']}_train")
    with preprocessors.training_options(**options):
        ds = task.get_dataset({"inputs": 256, "targets": 1024}, split="train", shuffle=False, seed=0, num_epochs=3)
    return list(ds.take(num).as_numpy_iterator())


def test_training_task_carries_rolls_only_when_the_aux_loss_is_on(tmp_path, music21_sequences, monkeypatch):
    config = track_examples.TokenizeConfig()
    fps = config.spectrogram_config.frames_per_second
    off = _task_examples(tmp_path, music21_sequences, monkeypatch)
    zero = _task_examples(tmp_path, music21_sequences, monkeypatch, frame_targets=False)
    on = _task_examples(tmp_path, music21_sequences, monkeypatch, frame_targets=True)
    assert len(off) == len(on) == len(zero) == 10
    for a, z, b in zip(off, zero, on, strict=True):
        assert set(a) == set(z) == {"inputs", "targets", "id"}  # nothing extra when off
        assert set(b) == {"inputs", "targets", "id", *frame_targets.FEATURES}
        for key in a:  # the same crops, targets and ids either way
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], z[key])
        expected = frame_targets.rolls_from_ids(b["targets"], len(b["inputs"]), config.codec, fps, include_ties=True)
        np.testing.assert_array_equal(b["aux_onsets"], expected[0])
        np.testing.assert_array_equal(b["aux_frames"], expected[1])
    assert sum(int(b["aux_frames"].sum()) for b in on) > 1000


def test_mixed_training_examples_carry_rolls_of_their_merged_targets(tmp_path, music21_sequences, monkeypatch):
    config = track_examples.TokenizeConfig()
    fps = config.spectrogram_config.frames_per_second
    mix = mixing.MixConfig(max_examples_per_mix=2, mix_probability=1.0)
    examples = _task_examples(tmp_path, music21_sequences, monkeypatch, mix_config=mix, frame_targets=True)
    plain = _task_examples(tmp_path, music21_sequences, monkeypatch, mix_config=mix)
    for ex, p in zip(examples, plain, strict=True):
        np.testing.assert_array_equal(ex["targets"], p["targets"])
        expected = frame_targets.rolls_from_ids(ex["targets"], len(ex["inputs"]), config.codec, fps,
                                                include_ties=True)
        np.testing.assert_array_equal(ex["aux_frames"], expected[1])
        assert ex["aux_onsets"].shape == (len(ex["inputs"]), 128)


def test_the_training_dataset_config_asks_for_frame_targets_when_the_macro_is_positive():
    """gin/train.gin binds the macro that weights the model's auxiliary loss onto the training dataset config, which
    the pipeline reads (the data modules read no gin); the train-eval stream never carries rolls."""
    import gin

    from mt3 import gin_utils
    from mt3.training import train  # noqa: F401  (registers utils.DatasetConfig)

    try:
        for weight, expected in ((0.0, False), (2.0, True)):
            gin_utils.parse_gin_flags(["gin/local_tiny.gin"], [f"AUX_FRAME_LOSS_WEIGHT = {weight}"],
                                      model_dir="/tmp/unused", finalize=False)
            cfg = gin.query_parameter("train_script.train.train_dataset_cfg").scoped_configurable_fn()
            assert cfg.frame_targets is expected and cfg.aux_frame_loss_weight == weight
            eval_cfg = gin.query_parameter("train_script.train.train_eval_dataset_cfg").scoped_configurable_fn()
            assert eval_cfg.frame_targets is False
    finally:
        with gin.unlock_config():
            gin.clear_config()
