"""Shared fixtures: real multi-instrument music from music21's bundled corpus, as NoteSequences and MIDI files.

Parsing is cached per session because music21 parsing costs ~0.1-0.6 s per work.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests do not write XLA's compile cache into the home directory (mt3.training.compilation; a test that wants it sets
# it).
os.environ.setdefault("MT3_COMPILATION_CACHE", "off")

# (music21 corpus path, GM programs given to its parts in order, seconds kept)
MUSIC21_PIECES = {
    "bach_chorale": ("bach/bwv66.6", [73, 71, 70, 32], None),  # flute, clarinet, bassoon, bass: four programs
    "string_quartet": ("haydn/opus74no1/movement3", [40, 40, 41, 42], 60.0),  # two violins share a program
    "piano_piece": ("joplin/maple_leaf_rag", [0, 0], 60.0),  # piano: two staves, one program
}


def music21_note_sequence(key: str):
    """The music21 piece `key` as a NoteSequence with one instrument per part and the given GM programs."""
    import music21
    import note_seq

    path, programs, max_seconds = MUSIC21_PIECES[key]
    score = music21.corpus.parse(path)
    ns = note_seq.NoteSequence(ticks_per_quarter=note_seq.STANDARD_PPQ)
    ns.tempos.add(time=0.0, qpm=120.0)
    seconds_per_quarter = 0.5
    for part_index, part in enumerate(score.parts):
        for n in part.flatten().notes:
            pitches = [p.midi for p in n.pitches] if n.isChord else [n.pitch.midi]
            start = float(n.getOffsetInHierarchy(score)) * seconds_per_quarter
            end = start + float(n.quarterLength) * seconds_per_quarter
            if end <= start or (max_seconds is not None and start >= max_seconds):
                continue
            for p in pitches:
                ns.notes.add(pitch=p, start_time=start, end_time=min(end, max_seconds or end), velocity=80,
                             program=programs[part_index], instrument=part_index, is_drum=False)
    ns.total_time = max(n.end_time for n in ns.notes)
    return ns


@pytest.fixture(scope="session")
def music21_sequences():
    """dict name -> NoteSequence for every piece in MUSIC21_PIECES (parsed once per session)."""
    return {key: music21_note_sequence(key) for key in MUSIC21_PIECES}


@pytest.fixture(scope="session")
def music21_midi_files(music21_sequences, tmp_path_factory):
    """dict name -> path of a MIDI file written from each music21 piece."""
    from mt3.midi_io import write_midi

    out = tmp_path_factory.mktemp("music21_midi")
    paths = {}
    for key, ns in music21_sequences.items():
        paths[key] = out / f"{key}.mid"
        write_midi(ns, paths[key])
    return paths


# Tests on the trained tiny model (`helpers.build_tiny_model`: a few hundred training steps, built once per session,
# then real decoding) are end-to-end: marked slow, so `scripts/test.sh --fast` (-m "not slow") leaves them out. A
# module's `tiny` / `tiny_im` / `base_url` fixture is that model when the module imports build_tiny_model.
TRAINED_MODEL_FIXTURES = frozenset({"tiny", "tiny_im", "base_url"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = getattr(item, "module", None)
        if TRAINED_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) and hasattr(module, "build_tiny_model"):
            item.add_marker(pytest.mark.slow)
