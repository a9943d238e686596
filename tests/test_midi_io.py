"""The MIDI files we write, read back with mido and pretty_midi: one program per channel, drums on channel 10, no two
sounding notes of one pitch on a channel, named tracks, velocities, tempo; on real music (music21's corpus) and on the
tiny trained model's transcriptions of rendered audio."""

from __future__ import annotations

import collections
import io

import mido
import note_seq
import pretty_midi
import pytest

from mt3 import midi_io


def midi_facts(data: bytes) -> dict:
    """What a General MIDI player sees in `data`: programs per channel, track names, velocities, and the same-pitch
    overlaps per channel (a note-on while that key already sounds on that channel)."""
    midi = mido.MidiFile(file=io.BytesIO(data))
    programs: dict[int, set[int]] = collections.defaultdict(set)
    names, velocities, overlaps = [], [], 0
    for track in midi.tracks:
        names += [m.name for m in track if m.type == "track_name"]
    for message in mido.merge_tracks(midi.tracks):  # all tracks in time order, as a player plays them
        if message.type == "program_change":
            programs[message.channel].add(message.program)
    sounding: collections.Counter = collections.Counter()
    for message in mido.merge_tracks(midi.tracks):
        if message.type == "note_on" and message.velocity > 0:
            overlaps += sounding[(message.channel, message.note)] > 0
            sounding[(message.channel, message.note)] += 1
            velocities.append(message.velocity)
        elif message.type in ("note_on", "note_off"):
            sounding[(message.channel, message.note)] = 0
    tracks_with_notes = [t for t in midi.tracks if any(m.type == "note_on" for m in t)]
    unnamed = [i for i, t in enumerate(midi.tracks) if not any(m.type == "track_name" for m in t)]
    return {"programs": dict(programs), "names": names, "velocities": velocities, "overlaps": overlaps,
            "tracks": len(tracks_with_notes), "unnamed": unnamed, "ticks_per_beat": midi.ticks_per_beat,
            "tempos": [m.tempo for t in midi.tracks for m in t if m.type == "set_tempo"]}


def assert_playable(data: bytes) -> dict:
    facts = midi_facts(data)
    assert facts["overlaps"] == 0, "two sounding notes of one pitch on one channel"
    assert all(len(p) == 1 for p in facts["programs"].values()), f"a channel with two programs: {facts['programs']}"
    assert not facts["unnamed"], f"tracks without a name: {facts['unnamed']}"
    return facts


def many_programs(music21_sequences, programs: int):
    """Real music spread over `programs` GM programs: every (piece, part, pitch class) gets one of them, cycling."""
    chosen = [8 * family + j for j in range(4) for family in (0, 3, 5, 7, 8)][:programs]  # five GM families
    out = note_seq.NoteSequence(ticks_per_quarter=220)
    slot = 0
    slots: dict[tuple, int] = {}
    for key, ns in sorted(music21_sequences.items()):
        for note in ns.notes:
            if note.start_time >= 20.0:
                continue
            where = (key, note.instrument, note.pitch % 12)
            if where not in slots:
                slots[where] = chosen[slot % len(chosen)]
                slot += 1
            copy = out.notes.add()
            copy.CopyFrom(note)
            copy.program = slots[where]
            copy.velocity = 40 + note.pitch % 80
    return out


def test_unisons_of_a_real_string_quartet_do_not_overlap_in_the_file(music21_sequences):
    """Two violins share program 40 in the Haydn quartet: their unisons are two notes of one pitch on one channel."""
    ns = music21_sequences["string_quartet"]
    raw = pretty_midi.PrettyMIDI()
    raw.instruments = [pretty_midi.Instrument(40)]
    violins = sorted((n for n in ns.notes if n.program == 40), key=lambda n: n.start_time)
    raw.instruments[0].notes = [pretty_midi.Note(80, n.pitch, n.start_time, n.end_time) for n in violins]
    buffer = io.BytesIO()
    raw.write(buffer)
    assert midi_facts(buffer.getvalue())["overlaps"] > 0, "the fixture has same-pitch overlaps to resolve"
    prepared, report = midi_io.prepare_notes(ns)
    assert report.overlaps_trimmed + report.overlaps_merged > 0
    facts = assert_playable(midi_io.midi_bytes(ns))
    assert sorted(facts["names"][1:]) == ["Cello", "Viola", "Violin"] and facts["names"][0] == "mt3 transcription"
    assert sorted(facts["programs"]) == [0, 1, 2] and sorted(min(p) for p in facts["programs"].values()) == [40, 41, 42]
    # every onset survives (only repeats within 1 ms merge), and the file reads back as exactly `prepared`
    onsets = {(round(n.start_time, 3), n.pitch, n.program) for n in ns.notes}
    assert {(round(n.start_time, 3), n.pitch, n.program) for n in prepared.notes} == onsets
    back = note_seq.midi_to_note_sequence(midi_io.midi_bytes(ns))
    key = lambda n: (round(n.start_time, 3), n.pitch, n.program, round(n.end_time, 3))  # noqa: E731
    assert sorted(map(key, back.notes)) == sorted(map(key, prepared.notes))
    assert midi_io.prepare_notes(prepared)[1].overlaps_trimmed == 0  # idempotent


def test_more_than_15_programs_merge_into_their_family_with_a_warning(music21_sequences):
    ns = many_programs(music21_sequences, 20)
    counts = collections.Counter(n.program for n in ns.notes)
    assert len(counts) == 20
    prepared, report = midi_io.prepare_notes(ns)
    assert len(report.merged_programs) == 5 and report.pitched_programs == 20
    assert all(a // 8 == b // 8 for a, b, _ in report.merged_programs), "merged within the GM family"
    assert sum(n for _, _, n in report.merged_programs) == sum(counts[a] for a, _, _ in report.merged_programs)
    (line,) = report.warnings()
    assert line.startswith("20 pitched programs but a MIDI file has 15 pitched channels: merged 5")
    facts = assert_playable(midi_io.midi_bytes(ns))
    assert len(facts["programs"]) == 15 and 9 not in facts["programs"]
    assert {p for ps in facts["programs"].values() for p in ps} == {n.program for n in prepared.notes}
    assert set(facts["names"][1:]) == {pretty_midi.program_to_instrument_name(p) for ps in facts["programs"].values()
                                       for p in ps}
    # the velocities are the notes' own (a model with velocity bins keeps them)
    assert sorted(facts["velocities"]) == sorted(n.velocity for n in prepared.notes)
    assert len(set(facts["velocities"])) > 20


def test_15_programs_and_drums_use_16_channels_without_merging(music21_sequences):
    ns = many_programs(music21_sequences, 15)
    for note in list(ns.notes)[::7]:
        drum = ns.notes.add()
        drum.CopyFrom(note)
        drum.is_drum, drum.pitch, drum.program = True, 36 + note.pitch % 10, 0
    prepared, report = midi_io.prepare_notes(ns)
    assert not report.merged_programs and not report.warnings()
    facts = assert_playable(midi_io.midi_bytes(ns))
    assert len(facts["programs"]) == 16 and facts["programs"][9] == {0} and "Drums" in facts["names"]
    back = note_seq.midi_to_note_sequence(midi_io.midi_bytes(ns))
    assert sum(n.is_drum for n in back.notes) == sum(n.is_drum for n in prepared.notes) > 0


def test_plan_programs_keeps_every_family_and_the_most_used():
    counts = {p: 100 - p for p in range(0, 32)}  # four families (piano .. guitar), 32 programs
    plan = midi_io.plan_programs(counts)
    kept = {v for v in plan.values()}
    assert len(kept) == 15 and {0, 8, 16, 24} <= kept and all(plan[p] // 8 == p // 8 for p in counts)
    assert all(plan[p] == p for p in range(11)), "the most used programs keep their own channel"
    every_family = midi_io.plan_programs({p: 2 if p else 3 for p in range(0, 128, 8)})  # 16 families, one each
    assert [(p, q) for p, q in every_family.items() if p != q] == [(120, 0)], "the last joins the most used"
    assert midi_io.plan_programs({0: 5, 40: 3}) == {0: 0, 40: 40}


def test_note_filter_drops_short_and_out_of_range_pitched_notes_never_drums(music21_sequences):
    ns = note_seq.NoteSequence()
    ns.CopyFrom(music21_sequences["piano_piece"])
    drum = ns.notes.add(pitch=20, start_time=1.0, end_time=1.01, is_drum=True, velocity=100)
    assert drum.pitch < 36
    lengths = sorted({round(n.end_time - n.start_time, 4) for n in ns.notes if not n.is_drum})
    limit = (lengths[0] + lengths[1]) / 2 * 1000.0  # between the two shortest note values
    kept, report = midi_io.prepare_notes(ns, midi_io.NoteFilter(min_note_ms=limit, min_pitch=36, max_pitch=84))
    pitched = [n for n in kept.notes if not n.is_drum]
    assert pitched and all(36 <= n.pitch <= 84 and (n.end_time - n.start_time) * 1000 >= limit - 1e-6
                           for n in pitched if n.end_time - n.start_time > 0.0011)  # not trimmed at a re-attack
    assert sum(n.is_drum for n in kept.notes) == 1
    assert report.filtered_short > 0 and report.filtered_pitch > 0
    assert "shorter than --min-note-ms dropped" in report.summary()
    with pytest.raises(ValueError, match="min_pitch \\(60\\) is above max_pitch \\(50\\)"):
        midi_io.NoteFilter(min_pitch=60, max_pitch=50)


@pytest.mark.parametrize("qpm", [120.0, 90.0, 97.0, 133.3])
def test_tempo_changes_the_beat_grid_not_the_note_times(music21_sequences, qpm):
    ns = music21_sequences["bach_chorale"]
    data = midi_io.midi_bytes(ns, qpm=qpm, title="chorale.wav")
    facts = assert_playable(data)
    (tempo,) = facts["tempos"]
    assert abs(tempo - 60_000_000 / qpm) <= 1 and facts["names"][0] == "chorale.wav"
    assert 60.0 / (facts["ticks_per_beat"] * qpm) <= 0.001 + 1e-12, "a tick is at most 1 ms"
    back = pretty_midi.PrettyMIDI(io.BytesIO(data))
    times = sorted((round(n.start, 2), n.pitch, n.start) for i in back.instruments for n in i.notes)
    expected = sorted((round(n.start_time, 2), n.pitch, n.start_time) for n in midi_io.prepare_notes(ns)[0].notes)
    assert [t[:2] for t in times] == [t[:2] for t in expected]
    assert max(abs(a[2] - b[2]) for a, b in zip(times, expected, strict=True)) <= 0.001  # within a tick
    with pytest.raises(ValueError, match="tempo must be in 20..400"):
        midi_io.midi_bytes(ns, qpm=10.0)


def test_plural():
    assert [midi_io.plural(n, "note") for n in (0, 1, 2, 1234)] == ["0 notes", "1 note", "2 notes", "1,234 notes"]
