"""Audio mixing of training examples (mt3.mixing) on real music: a one-crop mix is the plain crop, a mix's audio is the
sum of its crops, its targets decode to the union of the crops' notes, and the seqio task serves mixed examples."""

from __future__ import annotations

import helpers
import numpy as np
import pytest
from data_fixtures import chorale_train_task, gin_bound_train_examples

from mt3 import metrics_utils, mixing, vocabularies
from mt3.data import track_examples

tracks = helpers.tracks  # the three tokenized real pieces (a module-scoped fixture)


def _decode_window(ids, config):
    """Notes of one segment's target ids decoded at start time 0: {(onset step, pitch, program, is_drum)}."""
    tokens = vocabularies.trim_eos(vocabularies.decode_tokens(ids, config.codec.num_classes))
    ns = metrics_utils.event_predictions_to_ns([{"est_tokens": tokens, "start_time": 0.0}], config.codec,
                                               config.encoding_spec)["est_ns"]
    return {(round(n.start_time * 100), n.pitch, n.program, n.is_drum) for n in ns.notes}


def test_one_crop_mix_reproduces_the_crop_targets(tracks):
    config, tracks = tracks
    rng = np.random.default_rng(0)
    checked = 0
    for track in tracks:
        for start in rng.integers(0, len(track.frames) - 1, 25):
            start = int(start)
            end = min(start + 256, len(track.frames))
            frames, ids = mixing.mix_crops([mixing.Crop(track, start, end)], config)
            np.testing.assert_array_equal(ids, track_examples.segment_ids(track, start, end, config))
            np.testing.assert_array_equal(frames, track.frames[start:end])
            checked += 1
    assert checked == 75


def test_mixed_targets_decode_to_the_union_of_the_crops_notes(tracks):
    config, (chorale, quartet, piano) = tracks
    rng = np.random.default_rng(1)
    for _ in range(10):
        a_start = int(rng.integers(0, len(chorale.frames) - 256))
        b_start = int(rng.integers(0, len(quartet.frames) - 256))
        a = mixing.Crop(chorale, a_start, a_start + 256)
        b = mixing._aligned(mixing.Crop(quartet, b_start, b_start + 256), a)
        assert (b.start - a.start) % 5 == 0 and abs(b.start - b_start) < 5
        gains = [0.5, 0.25]
        frames, ids = mixing.mix_crops([a, b], config, gains)
        np.testing.assert_allclose(frames, 0.5 * chorale.frames[a.start:a.end] + 0.25 * quartet.frames[b.start:b.end],
                                   atol=1e-7)
        alone_a = _decode_window(mixing.mix_crops([a], config)[1], config)
        alone_b = _decode_window(mixing.mix_crops([b], config)[1], config)
        assert alone_a and alone_b
        assert _decode_window(ids, config) == alone_a | alone_b


def test_mixed_training_examples_mix_only_across_tracks(tracks):
    config, tracks = tracks
    plain = list(mixing.mixed_training_examples(tracks, config, mixing.MixConfig(), 256, np.random.default_rng(3)))
    mixed = list(mixing.mixed_training_examples(
        tracks, config, mixing.MixConfig(max_examples_per_mix=3, mix_probability=1.0), 256,
        np.random.default_rng(3)))
    assert len(plain) == len(mixed) == sum(1 for t in tracks for _ in range(0, len(t.frames), 2000))
    # every mixed example holds notes of more than one piece: more target tokens than the crop alone
    assert sum(len(m[1]) for m in mixed) > sum(len(p[1]) for p in plain)
    with pytest.raises(ValueError, match="max_examples_per_mix"):
        mixing.MixConfig(max_examples_per_mix=0)


def test_gin_bound_mixing_reaches_the_training_task(tmp_path, music21_sequences, monkeypatch):
    import gin

    task = chorale_train_task(tmp_path, music21_sequences["bach_chorale"], 4, monkeypatch)

    def target_tokens(**bindings):
        examples = gin_bound_train_examples(task, "mixing.MixConfig", 8, **bindings)
        return sum(int(np.sum(ex["targets"] > 0)) for ex in examples)

    try:
        plain = target_tokens()
        mixed = target_tokens(max_examples_per_mix=2, mix_probability=1.0, records_per_group=4)
    finally:
        with gin.unlock_config():
            gin.clear_config()
    assert mixed > plain
