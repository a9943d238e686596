"""The framework learns: a small model trained on two fixed 2.048 s segments of real rendered music (a Bach chorale
through fluidsynth and a GM soundfont, as the local corpus) decodes their targets exactly with greedy decoding, and the
decoded notes score F1 = 1.0 against the segments' references.

This is the end-to-end check that loss masking, EOS, the decoder-input shift, positions, the log-mel frontend and the
optimizer agree with each other: any mismatch between them shows up here as a model that cannot memorise.
"""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mt3 import metrics, metrics_utils, vocabularies
from mt3.data import track_examples
from mt3.models import decoding, models, network
from mt3.training import partitioning, trainer

pytestmark = pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="needs fluidsynth (scripts/setup.sh)")

SEGMENTS = ((2.0, 0), (9.0, 1))  # (start seconds, index) of the two memorised 256-frame segments
TARGET_LENGTH = 192
MAX_STEPS = 400


@pytest.fixture(scope="module")
def rendered(music21_sequences, tmp_path_factory):
    """The chorale's first 14 s rendered with fluidsynth (FluidR3 GM, a training soundfont), tokenized."""
    from data_fixtures import sub_sequence

    from mt3.corpus import rendering
    from mt3.midi_io import write_midi

    ns = sub_sequence(music21_sequences["bach_chorale"], 0.0, 14.0)
    tmp = tmp_path_factory.mktemp("memorise")
    write_midi(ns, tmp / "piece.mid")
    rendering.run_fluidsynth(tmp / "piece.mid", rendering.soundfont_path(rendering.TRAIN_SOUNDFONTS[0]),
                             tmp / "piece.wav")
    audio = rendering.read_mono(tmp / "piece.wav")
    config = track_examples.TokenizeConfig()
    return track_examples.tokenize_track(audio / max(np.abs(audio).max(), 1e-9), ns, config), config


def test_greedy_decoding_reproduces_memorised_segments(rendered):
    track, config = rendered
    frames_per_second = config.spectrogram_config.frames_per_second
    inputs, targets, starts = [], [], []
    for seconds, _ in SEGMENTS:
        start = int(seconds * frames_per_second)
        ids = track_examples.segment_ids(track, start, start + 256, config)
        assert 20 < len(ids) <= TARGET_LENGTH  # real content, and EOS fits
        row = np.zeros(TARGET_LENGTH, np.int32)
        row[: len(ids)] = ids
        inputs.append(track.frames[start:start + 256])
        targets.append(row)
        starts.append(float(track.frame_times[start]))
    x, y = np.stack(inputs), np.stack(targets)
    batch = {"encoder_input_tokens": x, "decoder_target_tokens": y,
             "decoder_input_tokens": np.concatenate([np.zeros((len(y), 1), np.int32), y[:, :-1]], axis=1),
             "decoder_loss_weights": (y > 0).astype(np.float32)}

    net = network.T5Config(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256, num_encoder_layers=2,
                           num_decoder_layers=2, dropout_rate=0.0)
    model = models.ContinuousInputsEncoderDecoderModel(network.Transformer(net))
    train = trainer.Trainer(model, trainer.OptimizerConfig(base_learning_rate=1e-2), partitioning.Partitioner())
    state = train.init_state(0)
    decoded = None
    for step in range(1, MAX_STEPS + 1):
        state, step_metrics = train.train_step(state, batch)
        if step % 50 == 0 and float(step_metrics["accuracy"]) == 1.0:
            decoded = np.asarray(decoding.decode(model.module, state.params, jnp.asarray(x),
                                                 max_decode_len=TARGET_LENGTH))
            if np.array_equal(decoded, y):
                break
    assert decoded is not None and np.array_equal(decoded, y), f"not memorised in {MAX_STEPS} steps"
    assert float(jax.device_get(step_metrics["loss"])) / float(step_metrics["num_tokens"]) < 0.1

    # the decoded tokens, decoded back into notes: every onset of the real score in the segment, with its program,
    # and notes identical (onsets, offsets, programs) to the decoded targets
    for row, target, start in zip(decoded, y, starts, strict=True):
        est, reference = _decode(row, start, config), _decode(target, start, config)
        # a lone segment's tie section names notes begun before it: decoding counts those as invalid, equally here
        assert est["est_invalid_events"] == reference["est_invalid_events"]
        truth = _window(track.sequence, start, start + 256 / frames_per_second)
        assert len(truth.notes) > 3
        against_score = metrics.note_metrics(truth, est["est_ns"], onsets_only=True)
        assert against_score["onset_f1"] == pytest.approx(1.0)
        against_targets = metrics.note_metrics(reference["est_ns"], est["est_ns"])
        assert against_targets["onset_offset_f1"] == pytest.approx(1.0)
        assert against_targets["multi_instrument_f1"] == pytest.approx(1.0)


def _decode(row, start, config):
    tokens = vocabularies.trim_eos(vocabularies.decode_tokens(row, config.codec.num_classes))
    return metrics_utils.event_predictions_to_ns([{"est_tokens": tokens, "start_time": start}], config.codec,
                                                 config.encoding_spec)


def _window(ns, start, end):
    """The notes of `ns` whose onsets fall in [start, end) (what one segment's targets can hold as onsets)."""
    import note_seq

    out = note_seq.NoteSequence()
    for note in ns.notes:
        if start <= note.start_time < end:
            out.notes.add().CopyFrom(note)
    return out
