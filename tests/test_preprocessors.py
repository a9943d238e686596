"""The numpy preprocessing core on real music: crops, targets, consecutive segments, and the shared frontend."""

from __future__ import annotations

import mir_eval
import numpy as np
import pytest
from data_fixtures import sub_sequence, synth

from mt3 import metrics_utils, spectrograms, vocabularies
from mt3.data import track_examples


def _intervals(ns, drums=False):
    notes = [n for n in ns.notes if n.is_drum == drums and n.end_time > n.start_time]
    iv = np.array([[n.start_time, n.end_time] for n in notes]).reshape(-1, 2)
    hz = np.array([440.0 * 2 ** ((n.pitch - 69) / 12) for n in notes])
    return iv, hz, notes


def _decode(segments, config):
    codec = config.codec
    preds = []
    for seg in segments:
        ids = seg["targets"]
        tokens = vocabularies.decode_tokens(ids, codec.num_classes)
        tokens = tokens[: np.argmax(tokens == vocabularies.DECODED_EOS_ID)] if np.any(
            tokens == vocabularies.DECODED_EOS_ID) else tokens
        preds.append({"est_tokens": tokens, "start_time": float(seg["input_times"][0])})
    return metrics_utils.event_predictions_to_ns(preds, codec, config.encoding_spec)


@pytest.fixture(scope="module")
def chorale_track(music21_sequences):
    ns = sub_sequence(music21_sequences["bach_chorale"], 0.0, 12.0)
    audio = synth(ns)
    return ns, audio


def test_eval_segments_cover_track_and_decode_to_reference(chorale_track):
    ns, audio = chorale_track
    config = track_examples.TokenizeConfig()
    track = track_examples.tokenize_track(audio, ns, config)
    segments = list(track_examples.eval_segments(track, config, input_length=256))
    # consecutive, non-overlapping, covering every frame; only the last may be short
    assert sum(len(s["inputs"]) for s in segments) == len(track.frames)
    assert all(len(s["inputs"]) == 256 for s in segments[:-1])
    np.testing.assert_array_equal(np.concatenate([s["inputs"] for s in segments]), track.frames)
    assert all(s["targets"][-1] == vocabularies.EOS_ID for s in segments)
    result = _decode(segments, config)
    assert result["est_invalid_events"] == 0
    ref_iv, ref_hz, _ = _intervals(ns)
    est_iv, est_hz, _ = _intervals(result["est_ns"])
    _, _, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(ref_iv, ref_hz, est_iv, est_hz)
    assert f1 == 1.0
    # programs survive with the full granularity
    assert {n.program for n in result["est_ns"].notes} == {n.program for n in ns.notes}


def test_training_crops_respect_length_chunks_and_hold_the_crop_notes(chorale_track):
    ns, audio = chorale_track
    config = track_examples.TokenizeConfig()
    track = track_examples.tokenize_track(audio, ns, config)
    rng = np.random.default_rng(0)
    examples = list(track_examples.training_examples(track, config, 256, rng))
    n_chunks = -(-len(track.frames) // track_examples.MAX_NUM_CACHED_FRAMES)
    assert 1 <= len(examples) <= n_chunks
    for inputs, ids in examples:
        assert 0 < len(inputs) <= 256
        assert ids[-1] == vocabularies.EOS_ID and np.all(ids[:-1] > vocabularies.EOS_ID)
    # crops of one track under many seeds start anywhere: frames match the track at some offset
    starts = set()
    for seed in range(20):
        (inputs, _), *_ = track_examples.training_examples(track, config, 256, np.random.default_rng(seed))
        hits = [s for s in range(len(track.frames) - len(inputs) + 1)
                if np.array_equal(track.frames[s:s + len(inputs)], inputs)]
        assert hits
        starts.add(hits[0])
    assert len(starts) > 5


def test_random_crop_bounds_follow_uniform_random_start():
    rng = np.random.default_rng(1)
    bounds = [track_examples.random_crop_bounds(1000, 256, rng) for _ in range(4000)]
    starts = np.array([b[0] for b in bounds])
    ends = np.array([b[1] for b in bounds])
    assert starts.min() == 0 and ends.max() == 1000
    assert np.all(ends - starts <= 256) and np.all(ends > starts)
    # start ~ U[-255, 1000) clipped at 0: about 255/1255 of the crops are cut at the track start
    frac_short_start = np.mean((starts == 0) & (ends < 256))
    assert 0.15 < frac_short_start < 0.25


def test_flat_granularity_drops_programs_and_piano_vocab_keeps_velocity(chorale_track):
    ns, audio = chorale_track
    config = track_examples.TokenizeConfig(vocab_config=vocabularies.ISMIR2021_VOCAB_CONFIG, include_ties=False,
                                          program_granularity="flat")
    track = track_examples.tokenize_track(audio, ns, config)
    segments = list(track_examples.eval_segments(track, config, input_length=512))
    codec = config.codec
    lo, hi = codec.event_type_range("program")
    for seg in segments:
        events = vocabularies.decode_tokens(seg["targets"], codec.num_classes)
        assert not np.any((events >= lo) & (events <= hi))
    result = _decode(segments, config)
    assert {n.program for n in result["est_ns"].notes} == {0}
    assert {n.velocity for n in result["est_ns"].notes} == {n.velocity for n in ns.notes}


def test_train_and_inference_features_are_identical(chorale_track):
    """The pipeline carries raw frames; the model's log-mel of a segment equals the log-mel of that audio span."""
    ns, audio = chorale_track
    config = track_examples.TokenizeConfig()
    spec = config.spectrogram_config
    track = track_examples.tokenize_track(audio, ns, config)
    seg = list(track_examples.eval_segments(track, config, input_length=256))[1]
    from_pipeline = np.asarray(spectrograms.spectrogram_from_frames(seg["inputs"][None], spec))[0]
    frames, _ = spectrograms.split_audio(audio, spec)
    start = 256 * spec.hop_width
    span = frames.reshape(-1)[start:start + 256 * spec.hop_width]
    from_audio = np.asarray(spectrograms.compute_spectrogram(span, spec))
    np.testing.assert_array_equal(from_pipeline, from_audio)
    assert from_pipeline.shape == (256, spec.num_mel_bins)


def test_tokenize_config_validates():
    with pytest.raises(ValueError, match="program_granularity"):
        track_examples.TokenizeConfig(program_granularity="coarse")
    with pytest.raises(ValueError, match="ties"):
        track_examples.TokenizeConfig(onsets_only=True, include_ties=True)
