"""GuitarSet converter on a miniature copy of the Zenodo release: JAMS files written by the `jams` package (six
per-string note_midi annotations with fractional pitches, plus a dense pitch_contour) and 44.1 kHz mono WAVs in
audio_mono-mic/ and audio_mono-pickup_mix/."""

from __future__ import annotations

import json

import jams
import numpy as np
import pytest
import soundfile as sf

from mt3.converters import guitarset
from mt3.data.records import ShardWriter, read_records, shard_paths
from mt3.errors import InputError

RATE = 44100
SECONDS = 3.0
# string -> [(time, duration, fractional MIDI pitch)] as GuitarSet annotates them
STRINGS = {
    "0": [(0.20, 0.80, 40.03), (1.50, 0.60, 42.96)],
    "1": [(0.25, 1.25, 55.04)],                      # rings on ...
    "2": [(1.00, 0.40, 54.93), (0.50, 0.50, 59.02)],  # ... until the same pitch is re-struck on string 2
    "3": [(0.51, 0.59, 58.97)],                      # unison with string 2's 59 (onsets 10 ms apart): one note
    "4": [(2.00, 0.50, 64.49)],
    "5": [],                                         # a string that was not played
}
# what a transcription reference must hold: rounded pitches, re-strike trimmed, unison merged (derived by hand)
EXPECTED = [  # (start, end, pitch)
    (0.20, 1.00, 40), (0.25, 1.00, 55), (0.50, 1.10, 59), (1.00, 1.40, 55), (1.50, 2.10, 43), (2.00, 2.50, 64),
]
EXCERPTS = {  # id -> split by MT3's rule (progression digit after the style)
    "00_BN1-129-Eb_comp": "train",
    "05_Jazz2-187-F#_solo": "train",
    "00_BN3-119-G_solo": "validation",
    "03_Funk3-98-A_comp": "validation",
}


def write_jams(path, title, strings=STRINGS, seconds=SECONDS):
    doc = jams.JAMS()
    doc.file_metadata.title = title
    doc.file_metadata.duration = seconds
    for string, notes in strings.items():
        contour = jams.Annotation(namespace="pitch_contour", time=0, duration=seconds)
        contour.annotation_metadata = jams.AnnotationMetadata(data_source=string)
        for t, _, p in notes:
            contour.append(time=t, duration=0.0, value={"index": 0, "frequency": 440 * 2 ** ((p - 69) / 12),
                                                        "voiced": True}, confidence=None)
        doc.annotations.append(contour)
        ann = jams.Annotation(namespace="note_midi", time=0, duration=seconds)
        ann.annotation_metadata = jams.AnnotationMetadata(data_source=string)
        for t, d, p in notes:
            ann.append(time=t, duration=d, value=p, confidence=None)
        doc.annotations.append(ann)
    doc.save(str(path))


def write_wav(path, seconds=SECONDS, subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * RATE)) / RATE
    tone = np.zeros_like(t)
    for notes in STRINGS.values():
        for start, duration, pitch in notes:
            on = (t >= start) & (t < start + duration)
            tone[on] += 0.2 * np.sin(2 * np.pi * 440 * 2 ** ((pitch - 69) / 12) * t[on])
    sf.write(path, tone / max(1.0, np.abs(tone).max()), RATE, subtype=subtype)


def make_guitarset(root, excerpts=EXCERPTS):
    (root / "annotation").mkdir(parents=True)
    for excerpt in excerpts:
        write_jams(root / "annotation" / f"{excerpt}.jams", excerpt)
        write_wav(root / "audio_mono-mic" / f"{excerpt}_mic.wav")
        write_wav(root / "audio_mono-pickup_mix" / f"{excerpt}_mix.wav", subtype="FLOAT")
    return root


@pytest.fixture(scope="module")
def guitarset_root(tmp_path_factory):
    return make_guitarset(tmp_path_factory.mktemp("GuitarSet"))


def test_split_by_progression_digit(guitarset_root):
    splits = guitarset.list_tracks(guitarset_root)
    assert {k: sorted(s.excerpt for s in v) for k, v in splits.items()} == {
        split: sorted(e for e, s in EXCERPTS.items() if s == split) for split in ("train", "validation")}
    assert all(s.id == f"{s.excerpt}_mic" and s.audio_path.parent.name == "audio_mono-mic"
               for v in splits.values() for s in v)
    both = guitarset.list_tracks(guitarset_root, audio_sources=("mic", "mix"))
    assert {len(v) for v in both.values()} == {4}
    assert len({s.id for v in both.values() for s in v}) == 8  # ids stay unique with two sources
    with pytest.raises(InputError, match="audio_sources"):
        guitarset.list_tracks(guitarset_root, audio_sources=("hex",))


def test_load_track_merges_strings(guitarset_root):
    for source in guitarset.list_tracks(guitarset_root, audio_sources=("mic", "mix"))["validation"]:
        [record] = guitarset.load_track(source)
        assert record.id == source.id and record.dataset == "guitarset" and record.sample_rate == 16000
        assert record.audio.dtype == np.float32 and record.audio.ndim == 1
        assert abs(len(record.audio) - round(SECONDS * 16000)) <= 1
        notes = sorted(record.sequence.notes, key=lambda n: (n.start_time, n.pitch))
        assert len(notes) == len(EXPECTED)
        for note, (start, end, pitch) in zip(notes, EXPECTED):
            assert note.pitch == pitch
            assert abs(note.start_time - start) < 1e-3 and abs(note.end_time - end) < 1e-3
            assert note.program == 24 and note.instrument == 0 and not note.is_drum and note.velocity > 0


def test_column_form_parses_like_list_form(tmp_path):
    path = tmp_path / "00_BN1-129-Eb_comp.jams"
    write_jams(path, path.stem)
    listed = guitarset.read_jams_notes(path)
    doc = json.loads(path.read_text())
    for ann in doc["annotations"]:
        if ann["namespace"] == "note_midi":
            ann["data"] = {k: [obs[k] for obs in ann["data"]] for k in ("time", "duration", "value", "confidence")}
    path.write_text(json.dumps(doc))
    assert guitarset.read_jams_notes(path) == listed
    assert len(listed) == sum(len(v) for v in STRINGS.values())


def test_records_round_trip(guitarset_root, tmp_path):
    sources = guitarset.list_tracks(guitarset_root)["train"]
    originals = {r.id: r for s in sources for r in guitarset.load_track(s)}
    with ShardWriter(tmp_path, "train", guitarset.NAME) as writer:
        for record in originals.values():
            writer.write(record)
    back = {r.id: r for r in read_records(shard_paths(tmp_path, "train"))}
    assert sorted(back) == sorted(originals)
    for track_id, record in back.items():
        np.testing.assert_array_equal(record.audio, originals[track_id].audio)
        assert record.sequence == originals[track_id].sequence


def _break(path, how):
    doc = json.loads(path.read_text())
    if how == "no note_midi":
        doc["annotations"] = [a for a in doc["annotations"] if a["namespace"] != "note_midi"]
    elif how == "bad value":
        next(a for a in doc["annotations"] if a["namespace"] == "note_midi")["data"][0]["value"] = "E2"
    path.write_text(json.dumps(doc) if how != "truncated" else path.read_text()[:500])


@pytest.mark.parametrize("how, expect", [("no note_midi", "no note_midi annotations"),
                                         ("truncated", "not valid JSON"), ("bad value", "observation 0")])
def test_malformed_jams_names_file(tmp_path, how, expect):
    root = make_guitarset(tmp_path / "GuitarSet", {"00_BN1-129-Eb_comp": "train"})
    path = root / "annotation" / "00_BN1-129-Eb_comp.jams"
    _break(path, how)
    with pytest.raises(InputError) as err:
        guitarset.load_track(guitarset.list_tracks(root)["train"][0])
    assert str(path) in str(err.value) and expect in str(err.value)


def test_missing_audio_bad_name_and_bad_root(tmp_path):
    root = make_guitarset(tmp_path / "GuitarSet", {"00_BN1-129-Eb_comp": "train"})
    (root / "audio_mono-mic" / "00_BN1-129-Eb_comp_mic.wav").unlink()
    with pytest.raises(InputError, match=r"audio_mono-mic/00_BN1-129-Eb_comp_mic\.wav: audio file not found"):
        guitarset.load_track(guitarset.list_tracks(root)["train"][0])
    (root / "annotation" / "notes.jams").write_text("{}")
    with pytest.raises(InputError, match=r"annotation/notes\.jams: name is not a GuitarSet id"):
        guitarset.list_tracks(root)
    with pytest.raises(InputError, match="not a GuitarSet root"):
        guitarset.list_tracks(root / "audio_mono-mic")


def test_labels_longer_than_audio_are_rejected(tmp_path):
    root = make_guitarset(tmp_path / "GuitarSet", {"00_BN1-129-Eb_comp": "train"})
    write_wav(root / "audio_mono-mic" / "00_BN1-129-Eb_comp_mic.wav", seconds=1.0)
    with pytest.raises(InputError, match=r"00_BN1-129-Eb_comp\.jams: notes run to 2\.50 s"):
        guitarset.load_track(guitarset.list_tracks(root)["train"][0])


def test_prepare_data_cli_end_to_end(guitarset_root, tmp_path, capsys):
    from mt3 import cli
    from mt3.data.records import read_manifest

    out = tmp_path / "prepared"
    assert cli.main(["prepare-data", "guitarset", "--root", str(guitarset_root), "--out", str(out)]) == 0
    for split in ("train", "validation"):
        manifest = read_manifest(out, split)
        ids = sorted(f"{e}_mic" for e, s in EXCERPTS.items() if s == split)
        assert sorted(t["id"] for t in manifest["tracks"]) == ids
        assert manifest["programs"] == {"24": len(ids) * len(EXPECTED)}
        assert sorted(r.id for r in read_records(shard_paths(out, split))) == ids

    bad_root = make_guitarset(tmp_path / "bad", {"00_Rock1-130-A_comp": "train", "01_SS2-107-Ab_solo": "train"})
    broken = bad_root / "annotation" / "01_SS2-107-Ab_solo.jams"
    broken.write_text(broken.read_text()[:300])
    bad_out = tmp_path / "bad_out"
    capsys.readouterr()
    assert cli.main(["prepare-data", "guitarset", "--root", str(bad_root), "--out", str(bad_out)]) == 2
    err = capsys.readouterr().err
    assert "mt3 prepare-data: error:" in err and str(broken) in err and "not valid JSON" in err
    assert not (bad_out / "train.manifest.json").exists()
    assert cli.main(["prepare-data", "guitarset", "--root", str(bad_root), "--out", str(bad_out), "--skip-bad"]) == 0
    assert [t["id"] for t in read_manifest(bad_out, "train")["tracks"]] == ["00_Rock1-130-A_comp_mic"]
    assert "01_SS2-107-Ab_solo.jams" in capsys.readouterr().out


def test_prepare_data_option_selects_audio_sources(guitarset_root, tmp_path, capsys):
    from mt3 import cli
    from mt3.data.records import read_manifest

    out = tmp_path / "both"
    assert cli.main(["prepare-data", "guitarset", "--root", str(guitarset_root), "--out", str(out),
                     "--option", "audio_sources=mic,mix"]) == 0
    ids = sorted(t["id"] for t in read_manifest(out, "validation")["tracks"])
    expected = sorted(f"{e}_{src}" for e, s in EXCERPTS.items() if s == "validation" for src in ("mic", "mix"))
    assert ids == expected
    capsys.readouterr()
    assert cli.main(["prepare-data", "guitarset", "--root", str(guitarset_root), "--out", str(tmp_path / "x"),
                     "--option", "no_such=1"]) == 2
    assert "no_such" in capsys.readouterr().err
