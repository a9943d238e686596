"""mt3.note_confidence on real MT3 token streams: the Bach chorale (4 programs) and a drum part tokenized segment by
segment as training does, with log-probabilities attached to every token."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from conftest import music21_note_sequence

from mt3 import metrics_utils, note_confidence, note_sequences, vocabularies
from mt3.data import track_tokens

CODEC = vocabularies.build_codec(vocabularies.MT3_VOCAB_CONFIG)


@pytest.fixture(scope="module")
def segments():
    """(the chorale + drums, its segments' tokens and snapped start times), 2.048 s segments with tie sections."""
    ns = music21_note_sequence("bach_chorale")
    for i in range(40):
        ns.notes.add(pitch=36 if i % 2 else 42, start_time=i * 0.25, end_time=i * 0.25 + 0.01, velocity=100,
                     is_drum=True, instrument=9)
    labels = note_sequences.trim_overlapping_notes(ns)
    duration = max(n.end_time for n in labels.notes) + 0.1
    frame_times = track_tokens.audio_frame_times(math.ceil(duration * note_sequences.SAMPLE_RATE))
    track = track_tokens.tokenize_note_sequence(labels, frame_times, CODEC, note_sequences.NoteEncodingWithTiesSpec)
    out = []
    for start in range(0, len(frame_times), 256):
        tokens = track_tokens.segment_targets(track, start, start + 256, CODEC, True, "full")
        out.append((np.asarray(tokens), metrics_utils.segment_start_time(float(frame_times[start]), CODEC)))
    return out


def _stitched(segments):
    predictions = [{"est_tokens": t, "start_time": s} for t, s in segments]
    return metrics_utils.event_predictions_to_ns(predictions, CODEC, note_sequences.NoteEncodingWithTiesSpec)["est_ns"]


def test_every_decoded_note_gets_its_onset_tokens(segments):
    """The walk finds exactly the stitched notes' onsets (pitched and drums, across ties), each with its time,
    velocity, pitch and (pitched) program tokens."""
    ns = _stitched(segments)
    scored = [(t, np.full(len(t), -0.01, np.float32), s) for t, s in segments]
    found = note_confidence.onset_token_log_probs(scored, CODEC, include_ties=True)
    assert set(found) == {note_confidence.note_key(n) for n in ns.notes}
    assert len(ns.notes) > 100 and any(n.is_drum for n in ns.notes)
    drum = next(n for n in ns.notes if n.is_drum and n.start_time > 0.1)
    pitched = next(n for n in ns.notes if not n.is_drum and n.start_time > 0.1)
    assert len(found[note_confidence.note_key(drum)]) >= 3  # time, velocity, drum
    assert len(found[note_confidence.note_key(pitched)]) >= 4  # time, velocity, pitch, program
    conf = note_confidence.NoteConfidence(found)  # the product, by default
    parts = found[note_confidence.note_key(pitched)]
    assert conf(pitched) == pytest.approx(math.exp(-0.01 * len(parts)), rel=1e-5)
    assert note_confidence.NoteConfidence(found, "min")(pitched) == pytest.approx(math.exp(-0.01), rel=1e-6)


def test_an_unsure_pitch_token_makes_only_its_note_unsure(segments):
    ns = _stitched(segments)
    target = next(n for n in ns.notes if not n.is_drum and 3.0 < n.start_time < 6.0)
    scored = []
    for tokens, start in segments:
        lp = np.full(len(tokens), -0.01, np.float32)
        scored.append((tokens, lp, start))
    # find the pitch token of `target`: walk with a distinct log-prob per token, then lower just that one
    offsets = np.cumsum([0] + [len(t) for t, _ in segments])
    unique = [(t, -(np.arange(len(t)) + offsets[k] + 1) * 1e-6, s) for k, (t, s) in enumerate(segments)]
    parts = note_confidence.onset_token_log_probs(unique, CODEC, include_ties=True)[note_confidence.note_key(target)]
    flat = int(round(-parts[-2] * 1e6)) - 1  # parts: time..., velocity, pitch, program
    k = int(np.searchsorted(offsets, flat, side="right") - 1)
    position = flat - int(offsets[k])
    event = CODEC.decode_event_index(int(segments[k][0][position]))
    assert (event.type, event.value) == ("pitch", target.pitch)  # the pitch token sits just before the program part
    scored[k][1][position] = math.log(0.2)
    conf = note_confidence.NoteConfidence(note_confidence.onset_token_log_probs(scored, CODEC, include_ties=True),
                                          "min")
    assert conf(target) == pytest.approx(0.2, rel=1e-5)
    product = note_confidence.NoteConfidence(conf.log_probs)
    assert product(target) == pytest.approx(0.2 * math.exp(-0.01 * (len(conf.log_probs[
        note_confidence.note_key(target)]) - 1)), rel=1e-5)
    assert sum(conf(n) < 0.5 for n in ns.notes) == 1
    mean = note_confidence.NoteConfidence(conf.log_probs, "mean")
    assert 0.2 < mean(target) < math.exp(-0.01)  # the mean dilutes one unsure token
    ns2 = copy.deepcopy(ns)
    assert note_confidence.drop_below(ns2, conf, 0.5) == 1 and len(ns2.notes) == len(ns.notes) - 1
    assert note_confidence.note_key(target) not in {note_confidence.note_key(n) for n in ns2.notes}


def test_aggregates():
    assert note_confidence.aggregate([math.log(0.5), math.log(0.9)], "min") == pytest.approx(0.5)
    assert note_confidence.aggregate([math.log(0.5), math.log(0.8)], "product") == pytest.approx(0.4)
    assert note_confidence.aggregate([math.log(0.25), math.log(1.0)], "mean") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="aggregate"):
        note_confidence.aggregate([0.0], "max")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from test_inference import build_tiny_model

    return build_tiny_model(tmp_path_factory)


@pytest.mark.slow
def test_transcribe_writes_confidence_and_min_confidence_drops_the_rest(tiny, tmp_path):
    """`mt3 transcribe --csv --json`: every note has a confidence in (0, 1], the same in both files; with
    --min-confidence (InferenceConfig.min_confidence) only notes at or above it are written."""
    import csv
    import json

    from mt3 import model_loading, transcription

    im = model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings)
    assert transcription.transcribe_files([tiny.wav(3)], tmp_path / "all", notes_csv=True, notes_json=True,
                                          model=im, progress=False) == []
    rows = list(csv.DictReader((tmp_path / "all" / "track3.notes.csv").open()))
    notes = json.loads((tmp_path / "all" / "track3.notes.json").read_text())
    assert len(rows) == len(notes) > 5
    scores = [float(r["confidence"]) for r in rows]
    assert all(0.0 < c <= 1.0 for c in scores) and scores == [n["confidence"] for n in notes]
    threshold = float(np.median(scores))
    strict = model_loading.load_inference_model(
        tiny.model_dir, gin_bindings=[*tiny.bindings, f"inference.InferenceConfig.min_confidence = {threshold!r}"])
    assert transcription.transcribe_files([tiny.wav(3)], tmp_path / "sure", notes_csv=True, model=strict,
                                          progress=False) == []
    kept = list(csv.DictReader((tmp_path / "sure" / "track3.notes.csv").open()))
    assert kept and len(kept) < len(rows) and all(float(r["confidence"]) >= threshold for r in kept)
    sure = {(r["onset"], r["pitch"], r["is_drum"]) for r in rows if float(r["confidence"]) >= threshold}
    assert {(r["onset"], r["pitch"], r["is_drum"]) for r in kept} <= sure
