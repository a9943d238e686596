"""The note-state decoder mask (mt3.models.event_mask): every token of real encoded pieces is allowed where it stands,
whatever it forbids the note decoder rejects, the issue's invalid continuations are forbidden, and decoding with the
mask off is token for token today's decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mt3 import note_sequences as nsq
from mt3 import run_length_encoding, vocabularies
from mt3.data import track_tokens
from mt3.models import decoding, event_mask, models, network

MT3_CODEC = vocabularies.build_codec(vocabularies.MT3_VOCAB_CONFIG)
PIANO_CODEC = vocabularies.build_codec(vocabularies.ISMIR2021_VOCAB_CONFIG)
SEGMENT_FRAMES = 256


def segments(ns, codec, spec, include_ties, *, frames=SEGMENT_FRAMES) -> list[np.ndarray]:
    """A piece's training targets per segment, as vocabulary ids ending in EOS (what the decoder should emit)."""
    seconds = max(n.end_time for n in ns.notes) + 0.5
    frame_times = track_tokens.audio_frame_times(int(np.ceil(seconds * 16000)))
    track = track_tokens.tokenize_note_sequence(ns, frame_times, codec, spec)
    return [np.append(vocabularies.encode_tokens(track_tokens.segment_targets(track, s, s + frames, codec,
                                                                              include_ties)), vocabularies.EOS_ID)
            for s in range(0, len(frame_times), frames)]


def padded(rows: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def mask_for(codec, include_ties=True, mode="note_state", onsets_only=False):
    return event_mask.NoteStateMask.for_codec(codec, vocabularies.num_embeddings(codec), include_ties=include_ties,
                                              onsets_only=onsets_only, mode=mode)


@pytest.fixture(scope="module")
def pieces(music21_sequences):
    """Real pieces (four wind programs, a string quartet with two violins on one program, two-stave piano), 40 s
    each, overlapping same-pitch notes trimmed as the training targets are."""
    from data_fixtures import sub_sequence

    return {k: nsq.trim_overlapping_notes(sub_sequence(ns, 0.0, 40.0)) for k, ns in music21_sequences.items()}


@pytest.mark.parametrize("mode", ["invalid", "note_state"])
def test_every_token_of_real_encoded_pieces_is_allowed(pieces, mode):
    for name, ns in pieces.items():
        rows = segments(ns, MT3_CODEC, nsq.NoteEncodingWithTiesSpec, True)
        assert sum(len(r) for r in rows) > 300, name  # real content: ties, onsets, offsets, several programs
        ok = np.asarray(event_mask.allowed_along(mask_for(MT3_CODEC, mode=mode), jnp.asarray(padded(rows))))
        bad = [(i, j, int(padded(rows)[i, j])) for i, j in zip(*np.nonzero(~ok))]
        assert not bad, f"{name}: forbidden (segment, position, id) {bad[:5]}"


def test_real_pieces_without_ties_and_onsets_only_are_allowed(pieces):
    ns = pieces["piano_piece"]
    untrimmed_rows = segments(ns, PIANO_CODEC, nsq.NoteEncodingSpec, False, frames=512)
    ok = event_mask.allowed_along(mask_for(PIANO_CODEC, include_ties=False), jnp.asarray(padded(untrimmed_rows)))
    assert np.all(np.asarray(ok))
    onset_rows = segments(ns, MT3_CODEC, nsq.NoteOnsetEncodingSpec, False)
    ok = event_mask.allowed_along(mask_for(MT3_CODEC, include_ties=False, onsets_only=True),
                                  jnp.asarray(padded(onset_rows)))
    assert np.all(np.asarray(ok))


def _invalid_count(ids: np.ndarray, codec) -> int:
    """Invalid events when this one segment is decoded alone from a fresh state (as the first segment is)."""
    tokens = vocabularies.trim_eos(vocabularies.decode_tokens(ids, codec.num_classes))
    state = nsq.NoteDecodingState()
    nsq.begin_tied_pitches_section(state)
    invalid, _ = run_length_encoding.decode_events(state, tokens, 0.0, None, codec, nsq.decode_note_event)
    return invalid


def test_what_the_invalid_mode_forbids_the_decoder_rejects(pieces):
    """At sampled positions of real segments, every id 'invalid' forbids (all of them, every codec range) adds one
    invalid event when appended to the prefix, decoded with the note decoder."""
    mask = mask_for(MT3_CODEC, mode="invalid")
    rows = segments(pieces["bach_chorale"], MT3_CODEC, nsq.NoteEncodingWithTiesSpec, True)[1:4]
    rng = np.random.default_rng(0)
    checked = 0
    for row in rows:
        for pos in sorted(rng.choice(np.arange(1, len(row) - 1), size=4, replace=False)):
            prefix = row[:pos]
            state = mask.init(1)
            for token in prefix:
                state = mask.update(state, jnp.asarray([token]))
            allowed = np.asarray(mask.allowed(state))[0]
            assert allowed[vocabularies.EOS_ID] and allowed[row[pos]]
            base = _invalid_count(prefix, MT3_CODEC)
            forbidden = np.flatnonzero(~allowed[: vocabularies.vocabulary_size(MT3_CODEC)])
            for token in rng.choice(forbidden, size=min(40, len(forbidden)), replace=False):
                # a shift back in time is rejected at the next event (here a velocity, valid at any later time)
                then = ids(("velocity", 1)) if token - vocabularies.NUM_SPECIAL_TOKENS <= MT3_CODEC.max_shift_steps \
                    else []
                assert _invalid_count(np.concatenate([prefix, [token], then]), MT3_CODEC) == base + 1, (pos, token)
                checked += 1
    assert checked > 300


def ids(*events) -> list[int]:
    from mt3.event_codec import Event

    return [MT3_CODEC.encode_event(Event(t, v)) + vocabularies.NUM_SPECIAL_TOKENS for t, v in events]


def allowed_after(prefix: list[int], mode="note_state") -> np.ndarray:
    mask = mask_for(MT3_CODEC, mode=mode)
    state = mask.init(1)
    for token in prefix:
        state = mask.update(state, jnp.asarray([token]))
    return np.asarray(mask.allowed(state))[0]


def test_the_issues_invalid_continuations_are_forbidden():
    """Tie section: program 40 pitch 60 tied; body: a violin (40) note 64 on at step 10."""
    pitch = ids(("pitch", 0))[0]
    tie_section = ids(("program", 40), ("pitch", 60), ("tie", 0))
    body = ids(("shift", 10), ("program", 40), ("velocity", 1), ("pitch", 64))
    # in the tie section: a pitch already tied may not be tied again; 61 may
    after_tie_decl = allowed_after(tie_section[:2])
    assert not after_tie_decl[pitch + 60] and after_tie_decl[pitch + 61]
    # after the tie token: no second tie; note-offs only for the sounding 60 and 64 of program 40
    prefix = tie_section + body + ids(("velocity", 0))
    after_off = allowed_after(prefix)
    assert not after_off[ids(("tie", 0))[0]]
    assert after_off[pitch + 60] and after_off[pitch + 64]
    assert not after_off[pitch + 62] and not after_off[pitch + 65]
    # the same pitches under another program are not sounding
    after_other = allowed_after(prefix + ids(("program", 41)))
    assert not after_other[pitch + 60] and not after_other[pitch + 64]
    # an onset of 64 while 64 of program 40 sounds: forbidden in note_state, allowed in 'invalid' (the decoder
    # accepts it); 64 of program 41 may start
    onset = tie_section + body + ids(("velocity", 1))
    assert not allowed_after(onset)[pitch + 64] and allowed_after(onset)[pitch + 65]
    assert allowed_after(onset, mode="invalid")[pitch + 64]
    assert allowed_after(onset + ids(("program", 41)))[pitch + 64]
    # once 64 ends it may start again; and it may not end twice
    ended = tie_section + body + ids(("velocity", 0), ("pitch", 64))
    assert not allowed_after(ended)[pitch + 64]
    assert allowed_after(ended + ids(("velocity", 1)))[pitch + 64]
    # no step back in time: after events at step 10 a shift to 5 is forbidden, to 10 or 12 allowed
    shift = ids(("shift", 0))[0]
    after_body = allowed_after(tie_section + body)
    assert not after_body[shift + 5] and after_body[shift + 10] and after_body[shift + 12]
    # a drum needs a non-zero velocity; PAD, UNK and extra ids never; EOS always
    assert not after_off[ids(("drum", 36))[0]] and allowed_after(onset)[ids(("drum", 36))[0]]
    for state_prefix in ([], tie_section, prefix, onset):
        allowed = allowed_after(state_prefix)
        assert allowed[vocabularies.EOS_ID]
        assert not allowed[vocabularies.PAD_ID] and not allowed[vocabularies.UNK_ID]
        assert not allowed[vocabularies.vocabulary_size(MT3_CODEC) - 1]  # the last extra id
    # note_state keeps the tie section to program/pitch/tie; 'invalid' lets a velocity through
    assert not allowed_after(tie_section[:2])[ids(("velocity", 1))[0]]
    assert allowed_after(tie_section[:2], mode="invalid")[ids(("velocity", 1))[0]]


def test_mask_rejects_a_codec_it_cannot_read():
    with pytest.raises(ValueError, match="decode mask"):
        mask_for(MT3_CODEC, mode="none")
    with pytest.raises(ValueError, match="vocab_size"):
        event_mask.NoteStateMask.for_codec(MT3_CODEC, 100, include_ties=True)


def _tiny_mt3_vocab_model():
    config = network.T5Config(vocab_size=1536, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=48, num_encoder_layers=1,
                              num_decoder_layers=1, dropout_rate=0.0, input_depth=24, input_frontend="features")
    module = network.Transformer(config)
    params = jax.jit(models.ContinuousInputsEncoderDecoderModel(module).init_params)(jax.random.PRNGKey(1))
    enc = jnp.asarray(np.random.default_rng(2).normal(size=(4, 6, 24)), jnp.float32)
    return module, params, enc


def test_decoding_with_the_mask_off_is_unchanged_and_on_emits_only_allowed_tokens():
    """A random network over the MT3 vocabulary emits mostly nonsense: with the mask every token is allowed where it
    stands; without it (step_mask None) the ids equal `decode`'s token for token."""
    module, params, enc = _tiny_mt3_vocab_model()
    reference = np.asarray(decoding.decode(module, params, enc, max_decode_len=32))
    free, _ = decoding.greedy_decode_compacting(module, params, enc, max_decode_len=32, first_len=16)
    np.testing.assert_array_equal(free, reference)
    mask = mask_for(MT3_CODEC)
    assert not np.all(np.asarray(event_mask.allowed_along(mask, jnp.asarray(free))))  # the mask has work to do
    masked, _ = decoding.greedy_decode_compacting(module, params, enc, max_decode_len=32, first_len=16,
                                                  step_mask=mask)
    assert np.all(np.asarray(event_mask.allowed_along(mask, jnp.asarray(masked))))
    assert not np.array_equal(masked, free)


def test_inference_config_decode_mask_reaches_the_decoder():
    """InferenceConfig.decode_mask (gin: inference.InferenceConfig.decode_mask; `mt3 transcribe --decode-mask`):
    a bad value is one clear error, and a model decoding with it emits only tokens the mask allows."""
    import argparse

    from helpers import random_inference_model

    from mt3 import inference
    from mt3.commands import transcribe

    with pytest.raises(ValueError, match="decode_mask must be one of"):
        inference.InferenceConfig(decode_mask="strict")
    with pytest.raises(ValueError, match="greedy"):
        inference.InferenceConfig(decode_mask="note_state", temperature=0.5)
    parser = argparse.ArgumentParser()
    transcribe.add_arguments(parser)
    args = parser.parse_args(["a.wav", "-o", "out", "--decode-mask", "note_state"])
    assert transcribe.decode_mask_bindings(args) == ["inference.InferenceConfig.decode_mask = 'note_state'"]
    assert transcribe.decode_mask_bindings(parser.parse_args(["a.wav", "-o", "out"])) == []

    frames = np.random.default_rng(0).normal(size=(3, 256, 128)).astype(np.float32) * 0.1
    free = random_inference_model(batch_size=4, max_decode_len=32)
    masked = random_inference_model(batch_size=4, max_decode_len=32, decode_mask="note_state")
    mask = mask_for(MT3_CODEC)
    free_ids, _ = free.predict_batch(frames)
    masked_ids, _ = masked.predict_batch(frames)
    assert not np.all(np.asarray(event_mask.allowed_along(mask, jnp.asarray(free_ids))))
    assert np.all(np.asarray(event_mask.allowed_along(mask, jnp.asarray(masked_ids))))
    assert masked.describe()["decode_mask"] == "note_state"


def test_skip_mode_refuses_a_forbidden_pitch_without_choosing_another():
    """'invalid_skip': the model's best id is the end of a note that is not sounding -> no pitch this step (the next
    best allowed non-pitch wins), where 'invalid' would end the sounding note the model ranked second."""
    pitch = ids(("pitch", 0))[0]
    prefix = ids(("program", 40), ("pitch", 60), ("tie", 0), ("shift", 10), ("velocity", 0))
    logits = np.zeros((1, vocabularies.num_embeddings(MT3_CODEC)), np.float32)
    logits[0, pitch + 62] = 3.0  # not sounding: forbidden
    logits[0, pitch + 60] = 2.0  # sounding: the hard mask's choice
    logits[0, ids(("velocity", 1))[0]] = 1.0
    results = {}
    for mode in ("invalid", "invalid_skip"):
        mask = mask_for(MT3_CODEC, mode=mode)
        state = mask.init(1)
        for token in prefix:
            state = mask.update(state, jnp.asarray([token]))
        results[mode] = int(jnp.argmax(mask.apply(state, jnp.asarray(logits))[0]))
    assert results == {"invalid": pitch + 60, "invalid_skip": ids(("velocity", 1))[0]}
    logits[0, pitch + 60] = 4.0  # an allowed best id: both modes keep it
    mask = mask_for(MT3_CODEC, mode="invalid_skip")
    state = mask.init(1)
    for token in prefix:
        state = mask.update(state, jnp.asarray([token]))
    assert int(jnp.argmax(mask.apply(state, jnp.asarray(logits))[0])) == pitch + 60
