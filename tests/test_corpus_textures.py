"""`mt3 build-corpus --textures`: small real corpora (music21 scores, fluidsynth, 1 minute each) in the `plain`, `piano`
and `performance` textures, read back from the files as the Slakh converter reads them. Seed 0 plans a folk tune, a
Schumann song (voice + piano), a Bach chorale and a Clara Schumann polonaise (test split); each texture build plans the
same pieces, since the texture draw has its own random stream. The default (`arranged=1`) is checked byte for byte in
tests/test_corpus.py (test_same_seed_same_corpus_any_worker_count_and_resume)."""

from __future__ import annotations

import numpy as np
import pretty_midi
import pytest
import yaml

from mt3.cli import main as cli_main
from mt3.corpus import builder, texture_mix, textures
from mt3.errors import InputError

MINUTES, SEED = 1.0, 0


def _build(root, spec: str):
    out = root / spec.replace("=", "").replace(",", "_")
    assert cli_main(["build-corpus", "--out", str(out), "--minutes", str(MINUTES), "--seed", str(SEED),
                     "--workers", "1", "--textures", spec, "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("textures")
    return {name: _build(root, f"{name}=1") for name in ("plain", "piano", "performance")}


def _tracks(root) -> dict[str, dict]:
    """id -> {meta, stems: [PrettyMIDI instrument per stem]} for every track of a corpus."""
    out = {}
    for split in builder.SPLITS:
        for track in sorted((root / split).glob("Track*")):
            meta = yaml.safe_load((track / "metadata.yaml").read_text())
            stems = [pretty_midi.PrettyMIDI(str(track / "MIDI" / f"{name}.mid")).instruments[0]
                     for name in sorted(meta["stems"])]
            out[track.name] = {"meta": meta, "stems": stems, "split": split}
    return out


def _planned_jobs(name: str) -> dict[str, builder.Job]:
    return {j.track_id: j for j in builder.Planner(MINUTES, SEED, textures={name: 1.0}).next_jobs()}


def test_plain_tracks_are_the_scores_own_instrumentation_as_written(corpora):
    root = corpora["plain"]
    summary = yaml.safe_load((root / "corpus.json").read_text())
    assert summary["textures"] == {"plain": 1.0}
    tracks, jobs = _tracks(root), _planned_jobs("plain")
    assert {t["split"] for t in tracks.values()} == set(builder.SPLITS)
    programs = set()
    for track_id, t in tracks.items():
        assert t["meta"]["texture"] == "plain" and not any(s["is_drum"] for s in t["meta"]["stems"].values())
        job = jobs[track_id]
        assert t["meta"]["lmd_midi_dir"] == job.source.key and builder.piece_split(job.source) == t["split"]
        excerpt = textures.read_excerpt(job.source, 0.0, job.target_seconds)
        assert [i.program for i in t["stems"]] == [p.program for p in excerpt.parts]  # one stem per part, its program
        for inst, part in zip(t["stems"], excerpt.parts):
            assert not inst.is_drum and {n.velocity for n in inst.notes} == {textures.PLAIN_VELOCITY}
            # as written: the score's notes (no transposition) at the written onsets (MIDI ticks: < 1 ms); only
            # same-pitch overlaps (a keyboard's two staves in unison) and notes under 20 ms are left out
            onsets = part.notes[:, 0] + textures.LEAD_IN_SECONDS
            for n in inst.notes:
                assert np.abs(onsets[part.notes[:, 2] == n.pitch] - n.start).min() < 1e-3
            assert len(inst.notes) >= 0.9 * len(part.notes)
            programs.add(inst.program)
    assert textures.VOICE in programs and 0 in programs  # folk tune and chorale sung, the polonaise on piano
    track_ids = [t["id"] for t in summary["tracks"]]
    assert track_ids == sorted(tracks) and all(t["texture"] == "plain" for t in summary["tracks"])


def test_piano_tracks_are_program_0_reductions(corpora):
    plain, piano = _tracks(corpora["plain"]), _tracks(corpora["piano"])
    assert sorted(piano) == sorted(plain)
    for track_id, t in piano.items():
        assert t["meta"]["texture"] == "piano"
        assert {s["program_num"] for s in t["meta"]["stems"].values()} == {0}
        assert all(i.program == 0 and not i.is_drum for i in t["stems"])
        assert [[(n.pitch, n.start) for n in i.notes] for i in t["stems"]] == [
            [(n.pitch, n.start) for n in i.notes] for i in plain[track_id]["stems"]]  # the same notes, on piano


def _onset_shifts(plain_stem, performed_stem) -> np.ndarray:
    """|performed - written| onset of each performed note, to the nearest written note of its pitch (counts can differ
    by a few: a keyboard's staves in unison are one note when written, two when jittered apart)."""
    written: dict[int, np.ndarray] = {}
    for n in plain_stem.notes:
        written.setdefault(n.pitch, []).append(n.start)
    return np.array([np.abs(np.asarray(written[n.pitch]) - n.start).min() for n in performed_stem.notes])


def test_performance_moves_onsets_a_little_and_adds_the_pedal(corpora, tmp_path):
    plain, performed = _tracks(corpora["plain"]), _tracks(corpora["performance"])
    assert sorted(performed) == sorted(plain)
    pedalled = reductions = 0
    for track_id, t in performed.items():
        assert t["meta"]["texture"] == "performance"
        written = plain[track_id]["stems"]
        own = [i.program for i in written]
        programs = [i.program for i in t["stems"]]
        assert programs in (own, [0] * len(own))  # the parts on their programs, or a piano reduction
        reductions += programs != own
        notes = sum(len(i.notes) for i in written)
        shifts = np.concatenate([_onset_shifts(a, b) for a, b in zip(written, t["stems"])])
        assert abs(len(shifts) - notes) <= 0.05 * notes
        assert np.median(shifts) > 0.005 and shifts.max() < 0.75  # rubato + jitter: small, never a beat's jump
        velocities = [n.velocity for i in t["stems"] for n in i.notes]
        assert len(set(velocities)) > 5  # dynamics, where plain is a constant 80
        for inst in t["stems"]:
            cc = list(inst.control_changes)
            assert all(c.number == 64 and c.value in (0, 127) for c in cc)
            pedalled += bool(cc)
            if programs != own and own != [0] * len(own):
                assert cc, "a performed reduction is pedalled on every stem"
    assert pedalled and reductions

    # The Slakh converter applies the pedal to the labels: sustained notes end later than their MIDI note-off.
    out = tmp_path / "prepared"
    assert cli_main(["prepare-data", "slakh", "--root", str(corpora["performance"]), "--out", str(out)]) == 0
    from mt3.data.records import read_records, shard_paths

    longer = 0
    for split in builder.SPLITS:
        for rec in read_records(shard_paths(out, split)):
            stems = performed[rec.id]["stems"]
            assert len(rec.sequence.notes) == sum(len(i.notes) for i in stems) and not rec.sequence.control_changes
            for n in rec.sequence.notes:
                midi = min((m for m in stems[n.instrument].notes if m.pitch == n.pitch),
                           key=lambda m: abs(m.start - n.start_time))
                assert abs(midi.start - n.start_time) < 1e-3 and n.end_time >= midi.end - 1e-3
                end = midi.end
                longer += n.end_time > end + 0.05
    assert longer > 0


def test_mixed_textures_are_drawn_apart_from_the_default_draws(tmp_path):
    mixed = texture_mix.parse("arranged=2,plain=1,piano=1,performance=0")
    assert mixed == {"arranged": 0.5, "plain": 0.25, "piano": 0.25}
    default, mix = builder.Planner(40, 3), builder.Planner(40, 3, textures=mixed)
    a, b = default.next_jobs(), mix.next_jobs()
    assert [(j.source, j.seed, j.target_seconds, j.soundfont) for j in a] == [
        (j.source, j.seed, j.target_seconds, j.soundfont) for j in b]  # the planner's own draws are untouched
    assert all(j.texture is None for j in a)
    drawn = [j.texture for j in b]
    assert set(drawn) == set(mixed) and abs(drawn.count("arranged") / len(drawn) - 0.5) < 0.2
    assert all(not j.drums for j in b if j.texture != "arranged")  # drums belong to the arranged texture
    assert [j.texture for j in builder.Planner(40, 3, textures=mixed).next_jobs()] == drawn  # seeded
    assert builder.Planner(40, 3, textures={"arranged": 1.0}).next_jobs() == a


@pytest.mark.parametrize("value, problem", [
    ("orchestral=1", "unknown texture 'orchestral'"), ("plain=-0.5,piano=1", "must be a finite number >= 0"),
    ("plain=0,piano=0", "at least one weight must be positive"), ("plain", "expected NAME=WEIGHT"),
    ("plain=lots", "is not a number"), ("plain=1,plain=2", "given twice"), ("plain=nan", "finite"),
])
def test_bad_textures_are_one_line_errors(tmp_path, capsys, value, problem):
    out = tmp_path / "never"
    assert cli_main(["build-corpus", "--out", str(out), "--minutes", "1", "--textures", value, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mt3 build-corpus: error: --textures") and problem in err and "\n" not in err
    assert not out.exists()


def test_a_corpus_refuses_to_resume_with_other_textures(corpora):
    with pytest.raises(InputError, match="--textures plain=1; to build another"):
        builder.build_corpus(corpora["plain"], minutes=MINUTES, seed=SEED, workers=1, progress=False,
                             textures={"piano": 1.0})
