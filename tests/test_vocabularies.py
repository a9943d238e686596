"""Vocabulary facts MT3's checkpoints depend on (REFERENCE §2): sizes, the id layout, velocity bins, id mapping."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mt3 import vocabularies
from mt3.event_codec import Event

MT3 = vocabularies.build_codec(vocabularies.MT3_VOCAB_CONFIG)
PIANO = vocabularies.build_codec(vocabularies.ISMIR2021_VOCAB_CONFIG)


@pytest.mark.parametrize("name, classes, vocab_size, rows",
                         [("mt3", 1388, 1491, 1536), ("ismir2021", 1514, 1617, 1664)])
def test_sizes_match_mt3_checkpoints(name, classes, vocab_size, rows):
    codec = vocabularies.build_codec(vocabularies.PRESETS[name])
    assert codec.num_classes == classes
    assert vocabularies.vocabulary_size(codec) == vocab_size
    assert vocabularies.num_embeddings(codec) == rows == vocabularies.num_embeddings(vocab_size)


def ids(codec, event_type, value):
    return int(vocabularies.encode_tokens([codec.encode_event(Event(event_type, value))])[0])


def test_id_layout_matches_reference_table():
    # MT3 (vb=1): shift 3.., pitch 1004.., velocity 1132/1133, tie 1134, program 1135.., drum 1263..
    assert [ids(MT3, "shift", 0), ids(MT3, "shift", 1000), ids(MT3, "pitch", 0), ids(MT3, "pitch", 127)] == [
        3, 1003, 1004, 1131]
    assert [ids(MT3, "velocity", 0), ids(MT3, "velocity", 1), ids(MT3, "tie", 0)] == [1132, 1133, 1134]
    assert [ids(MT3, "program", 0), ids(MT3, "program", 127), ids(MT3, "drum", 0), ids(MT3, "drum", 127)] == [
        1135, 1262, 1263, 1390]
    # ismir2021 (vb=127): velocity 1132..1259, tie 1260, program 1261.., drum 1389..1516
    assert [ids(PIANO, "velocity", 127), ids(PIANO, "tie", 0), ids(PIANO, "program", 0), ids(PIANO, "drum", 127)] == [
        1259, 1260, 1261, 1516]
    assert MT3.steps_per_second == 100 and MT3.max_shift_steps == 1000
    assert vocabularies.num_velocity_bins_from_codec(MT3) == 1
    assert vocabularies.num_velocity_bins_from_codec(PIANO) == 127


def test_presets_and_abbrev():
    assert vocabularies.MT3_VOCAB_CONFIG.abbrev == "vb1" == vocabularies.MT3_VOCAB_CONFIG.abbrev_str
    assert vocabularies.ISMIR2021_VOCAB_CONFIG.abbrev == ""
    assert vocabularies.VocabularyConfig(steps_per_second=50, max_shift_seconds=5).abbrev == "ss50ms5"
    assert vocabularies.vocab_config_from_name("mt3") is vocabularies.MT3_VOCAB_CONFIG
    with pytest.raises(ValueError, match="ismir2021"):
        vocabularies.vocab_config_from_name("mt4")
    with pytest.raises(ValueError):
        vocabularies.VocabularyConfig(num_velocity_bins=0)
    assert len({vocabularies.MT3_VOCAB_CONFIG, vocabularies.VocabularyConfig(num_velocity_bins=1)}) == 1


@given(velocity=st.integers(1, 127), bins=st.integers(1, 127))
def test_velocity_bins(velocity, bins):
    b = vocabularies.velocity_to_bin(velocity, bins)
    assert 1 <= b <= bins
    decoded = vocabularies.bin_to_velocity(b, bins)
    assert vocabularies.velocity_to_bin(decoded, bins) == b  # decoding then re-encoding keeps the bin
    assert vocabularies.bin_to_velocity(vocabularies.velocity_to_bin(velocity, 127), 127) == velocity
    assert vocabularies.bin_to_velocity(vocabularies.velocity_to_bin(velocity, 1), 1) == 127
    assert vocabularies.velocity_to_bin(0, bins) == 0 and vocabularies.bin_to_velocity(0, bins) == 0


@given(st.lists(st.integers(0, MT3.num_classes - 1), max_size=50))
def test_encode_decode_tokens_round_trip(indices):
    encoded = vocabularies.encode_tokens(indices)
    assert encoded.dtype == np.int32 and np.all(encoded >= 3)
    np.testing.assert_array_equal(vocabularies.decode_tokens(encoded, MT3.num_classes), indices)


def test_decode_tokens_special_ids_and_trim():
    size = vocabularies.vocabulary_size(MT3)
    decoded = vocabularies.decode_tokens([3, 0, 2, 1390, 1391, size - 1, 1, 7], MT3.num_classes)
    assert list(decoded) == [0, -2, -2, 1387, -2, -2, -1, 4]
    # the first extra id of each vocabulary is invalid, never an index past the codec (num_classes is required)
    piano = vocabularies.build_codec(vocabularies.ISMIR2021_VOCAB_CONFIG)
    assert list(vocabularies.decode_tokens([5, 1, 3 + piano.num_classes], piano.num_classes)) == [2, -1, -2]
    with pytest.raises(TypeError):
        vocabularies.decode_tokens([5, 1, 1391])
    with pytest.raises(ValueError, match="num_classes"):
        vocabularies.decode_tokens([5, 1, 1391], None)
    assert list(vocabularies.trim_eos(decoded)) == [0, -2, -2, 1387, -2, -2]
    assert list(vocabularies.trim_eos([4, 5])) == [4, 5]
    with pytest.raises(ValueError):
        vocabularies.encode_tokens([-1])
    with pytest.raises(ValueError):
        vocabularies.encode_tokens([MT3.num_classes], MT3.num_classes)


def test_program_granularity_maps():
    lo, _ = MT3.event_type_range("program")
    tokens = np.array([5, lo + 33, lo + 127, 1000])
    assert list(vocabularies.programs_to_midi_classes(tokens, MT3)) == [5, lo + 32, lo + 120, 1000]
    assert list(vocabularies.drop_programs(tokens, MT3)) == [5, 1000]
    assert [vocabularies.PROGRAM_GRANULARITIES[g].program_map_fn(43) for g in ("flat", "midi_class", "full")] == [
        0, 40, 43]


def test_symbolic_core_imports_without_tensorflow():
    code = ("import sys; from mt3 import event_codec, vocabularies, run_length_encoding, note_sequences, "
            "metrics_utils; bad = [m for m in ('tensorflow', 'seqio', 'jax', 'note_seq') if m in sys.modules]; "
            "print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generic_token_vocabulary_is_a_seqio_vocabulary():
    import seqio
    import tensorflow as tf

    vocab = vocabularies.vocabulary_from_codec(MT3)
    assert isinstance(vocab, seqio.Vocabulary) and isinstance(vocab, vocabularies.GenericTokenVocabulary)
    assert (vocab.vocab_size, vocab.eos_id, vocab.unk_id, vocab.pad_id) == (1491, 1, 2, 0)
    assert vocab.encode([0, 1387]) == [3, 1390]
    with pytest.raises(ValueError):
        vocab.encode([1388])
    assert vocab.decode([3, 1390, 0, 2, 1391, 1, 5]) == [0, 1387, -2, -2, -2, -1]
    got = vocab.decode_tf(tf.constant([3, 1390, 0, 1391, 1, 5, 0])).numpy().tolist()
    assert got == [0, 1387, -2, -2, -1, -1, -1]  # from the first EOS on: DECODED_EOS_ID
    assert vocab.encode_tf(tf.constant([0, 5])).numpy().tolist() == [3, 8]
    assert vocab == vocabularies.GenericTokenVocabulary(1388, extra_ids=100)
    assert vocab != vocabularies.vocabulary_from_codec(PIANO)
    with pytest.raises(AttributeError):
        vocabularies.NoSuchThing  # noqa: B018
