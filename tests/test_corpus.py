"""`mt3 build-corpus`: real music21 scores rendered with the real fluidsynth and GM soundfonts.

One small corpus (1.5 minutes) is built once through the CLI and inspected by most tests; a second build (other worker
count) checks determinism. Slakh2100's key names are written out here from the dataset's documentation, not imported
from the implementation.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf
import yaml

from mt3.cli import main as cli_main
from mt3.corpus import arrangement, rendering
from mt3.corpus import builder as corpus
from mt3.errors import InputError

MINUTES = 1.5
SLAKH_TRACK_KEYS = {"UUID", "audio_dir", "lmd_midi_dir", "midi_dir", "normalization_factor", "normalized",
                    "overall_gain", "stems", "target_peak"}
SLAKH_STEM_KEYS = {"audio_rendered", "inst_class", "integrated_loudness", "is_drum", "midi_program_name", "midi_saved",
                   "plugin_name", "program_num"}
GM_FAMILY_OF = ["Piano", "Chromatic Percussion", "Organ", "Guitar", "Bass", "Strings", "Strings (continued)", "Brass",
                "Reed", "Pipe", "Synth Lead", "Synth Pad", "Sound Effects", "Ethnic", "Percussive", "Sound Effects"]


def _seed_with_drums() -> int:
    """The first seed whose first planned round holds a train piece that really gets a drum stem."""
    for seed in range(100):
        for job in corpus.Planner(MINUTES, seed).next_jobs():
            if job.split == "train" and job.drums:
                try:
                    arr = arrangement.arrange(job.source, seed=job.seed, target_seconds=job.target_seconds, drums=True)
                except arrangement.SkipPiece:
                    continue
                if any(i.is_drum for i in arr.instruments):
                    return seed
    raise AssertionError("no seed in 0..99 plans a drum piece")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    seed = _seed_with_drums()
    out = tmp_path_factory.mktemp("corpus") / "local"
    rc = cli_main(["build-corpus", "--out", str(out), "--minutes", str(MINUTES), "--seed", str(seed),
                   "--workers", "2", "--no-progress"])
    assert rc == 0
    return out, seed


def _tracks(root: Path) -> list[Path]:
    return sorted(p for split in corpus.SPLITS for p in (root / split).glob("Track*"))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_metadata_are_slakh(built):
    root, _ = built
    tracks = _tracks(root)
    assert tracks
    for track in tracks:
        meta = yaml.safe_load((track / "metadata.yaml").read_text())
        assert set(meta) == SLAKH_TRACK_KEYS
        assert meta["audio_dir"] == "stems" and meta["midi_dir"] == "MIDI" and meta["normalized"] is True
        assert meta["target_peak"] == -1.0
        assert np.isclose(20 * np.log10(meta["overall_gain"]), meta["normalization_factor"], atol=1e-3)
        names = sorted(meta["stems"])
        assert names == [f"S{i:02d}" for i in range(len(names))]
        assert sorted(p.stem for p in (track / "stems").iterdir()) == names
        assert sorted(p.stem for p in (track / "MIDI").iterdir()) == names
        mix_info = sf.info(str(track / "mix.flac"))
        assert (mix_info.samplerate, mix_info.channels) == (16000, 1)
        assert (mix_info.format, mix_info.subtype) == ("FLAC", "PCM_16")
        all_src = pretty_midi.PrettyMIDI(str(track / "all_src.mid"))
        assert len(all_src.instruments) == len(names)
        ends = []
        for name in names:
            info = meta["stems"][name]
            assert set(info) == SLAKH_STEM_KEYS
            assert info["audio_rendered"] is True and info["midi_saved"] is True
            stem_info = sf.info(str(track / "stems" / f"{name}.flac"))
            assert (stem_info.samplerate, stem_info.channels, stem_info.frames) == (16000, 1, mix_info.frames)
            pm = pretty_midi.PrettyMIDI(str(track / "MIDI" / f"{name}.mid"))
            assert len(pm.instruments) == 1
            inst = pm.instruments[0]
            assert inst.notes and min(n.end - n.start for n in inst.notes) >= 0.0195
            ends.append(pm.get_end_time())
            assert inst.is_drum == info["is_drum"]
            if info["is_drum"]:
                assert (info["program_num"], inst.program, info["inst_class"]) == (128, 0, "Drums")
            else:
                assert info["program_num"] == inst.program
                assert info["inst_class"] == GM_FAMILY_OF[inst.program // 8]
                assert info["midi_program_name"] == pretty_midi.program_to_instrument_name(inst.program)
            assert isinstance(info["integrated_loudness"], float) and info["integrated_loudness"] < 0
        # Audio covers the last note-off plus a one-second tail.
        assert abs(mix_info.frames / 16000 - max(ends) - 1.0) < 0.01
        assert np.isclose(all_src.get_end_time(), max(ends), atol=1e-3)


def test_splits_are_disjoint_sized_and_use_their_soundfonts(built):
    root, seed = built
    summary = yaml.safe_load((root / "corpus.json").read_text())  # JSON is YAML
    assert (summary["seed"], summary["minutes"]) == (seed, MINUTES)
    sources = {s: [] for s in corpus.SPLITS}
    seconds = dict.fromkeys(corpus.SPLITS, 0.0)
    for split in corpus.SPLITS:
        for track in sorted((root / split).glob("Track*")):
            meta = yaml.safe_load((track / "metadata.yaml").read_text())
            sources[split].append(meta["lmd_midi_dir"])
            seconds[split] += sf.info(str(track / "mix.flac")).duration
            fonts = {s["plugin_name"] for s in meta["stems"].values()}
            if split == "test":
                assert fonts == {"MuseScore_General_Lite.sf3"}
            else:
                assert len(fonts) == 1 and fonts <= {"FluidR3_GM.sf2", "TimGM6mb.sf2"}
        assert sources[split], f"split {split} is empty"
        assert sources[split] == summary["splits"][split]["sources"]
        assert np.isclose(seconds[split], summary["splits"][split]["seconds"], atol=0.01)
    all_sources = [s for v in sources.values() for s in v]
    assert len(all_sources) == len(set(all_sources)), "a piece appears twice"
    total = sum(seconds.values())
    assert 0.8 * MINUTES * 60 <= total <= 1.35 * MINUTES * 60
    assert seconds["train"] >= 0.6 * total


def test_some_piece_has_a_drum_stem(built):
    root, _ = built
    drum_stems = []
    for track in _tracks(root):
        meta = yaml.safe_load((track / "metadata.yaml").read_text())
        drum_stems += [track / "MIDI" / f"{n}.mid" for n, s in meta["stems"].items()
                       if s["is_drum"] is True and s["program_num"] == 128]
    assert drum_stems
    pm = pretty_midi.PrettyMIDI(str(drum_stems[0]))
    pitches = {n.pitch for n in pm.instruments[0].notes}
    assert pm.instruments[0].is_drum and pitches <= set(range(35, 82)) and {36} & pitches  # GM kit, with a kick
    audio, _ = sf.read(str(drum_stems[0]).replace("/MIDI/", "/stems/").replace(".mid", ".flac"))
    assert np.abs(audio).max() > 0.01


def test_mix_is_the_sum_of_the_stems_peak_normalised(built):
    root, _ = built
    for track in _tracks(root):
        mix, _ = sf.read(str(track / "mix.flac"), dtype="float64")
        stems = [sf.read(str(p), dtype="float64")[0] for p in sorted((track / "stems").glob("*.flac"))]
        lsb = 1 / 32768
        assert np.abs(mix - np.sum(stems, axis=0)).max() <= (len(stems) + 1) * lsb
        peak = max(np.abs(mix).max(), max(np.abs(s).max() for s in stems))
        assert abs(peak - 10 ** (-1 / 20)) <= 2 * lsb


def _planned_splits(minutes: float, seed: int) -> dict[str, str]:
    """Piece -> split over a whole plan, every planned track counted as built at its target length."""
    planner, out = corpus.Planner(minutes, seed), {}
    while jobs := planner.next_jobs():
        for job in jobs:
            assert out.setdefault(job.source.key, job.split) == job.split
            planner.record(job.split, int(job.target_seconds * corpus.SAMPLE_RATE))
    return out


def test_a_piece_keeps_its_split_across_corpus_sizes_and_seeds():
    """Growing the corpus or changing the seed never moves a test piece into another corpus's training split."""
    plans = [_planned_splits(3, 0), _planned_splits(40, 0), _planned_splits(40, 7)]
    seen: dict[str, str] = {}
    for plan in plans:
        assert set(plan.values()) == set(corpus.SPLITS)
        for key, split in plan.items():
            assert seen.setdefault(key, split) == split, f"{key} is in {seen[key]} and {split}"
    assert len(seen) > len(plans[0]) and not set(plans[1]) <= set(plans[0])  # the plans really differ
    big = plans[1]
    assert sum(s == "test" for s in big.values()) >= 5 and sum(s == "train" for s in big.values()) >= 40


def test_same_seed_same_corpus_any_worker_count_and_resume(built, tmp_path):
    """Also: `--textures arranged=1` (the default mix) builds exactly the corpus built without the option."""
    root, seed = built
    before = _digest(root)
    other = tmp_path / "again"
    assert cli_main(["build-corpus", "--out", str(other), "--minutes", str(MINUTES), "--seed", str(seed),
                     "--workers", "1", "--textures", "arranged=1", "--no-progress"]) == 0
    assert _digest(other) == before  # MIDI, metadata, corpus.json and audio, byte for byte
    # Resume: nothing to redo, nothing rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in other.rglob("*.flac")}
    corpus.build_corpus(other, minutes=MINUTES, seed=seed, workers=1, progress=False)
    assert {p: p.stat().st_mtime_ns for p in other.rglob("*.flac")} == mtimes
    # An interrupted build: one track missing, a stale temporary folder left behind. The re-run completes it.
    victim = _tracks(other)[-1]
    for p in sorted(victim.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    victim.rmdir()
    stale = other / f".{victim.name}.abc123"
    (stale / "stems").mkdir(parents=True)
    corpus.build_corpus(other, minutes=MINUTES, seed=seed, workers=1, progress=False)
    assert not stale.exists()
    assert _digest(other) == before
    # Another seed picks other pieces.
    other_sources = [j.source.key for j in corpus.Planner(MINUTES, seed + 1).next_jobs()]
    assert other_sources != [j.source.key for j in corpus.Planner(MINUTES, seed).next_jobs()]


def test_resume_refuses_a_folder_built_with_other_arguments(built, tmp_path):
    root, seed = built
    with pytest.raises(InputError, match="another --seed"):
        corpus.build_corpus(root, minutes=MINUTES, seed=seed + 1, workers=1, progress=False)
    partial = tmp_path / "partial"  # an interrupted build has no corpus.json: its tracks are checked one by one
    shutil.copytree(root, partial)
    (partial / "corpus.json").unlink()
    with pytest.raises(InputError, match=r"Track00001: holds .*another --seed"):
        corpus.build_corpus(partial, minutes=MINUTES, seed=seed + 1, workers=1, progress=False)


def test_arrangement_keeps_every_score_note_in_range():
    """bwv66.6 has no repeats: every (tie-merged) note of the score appears once, transposed, in a playable range."""
    from music21 import corpus as m21corpus

    source = next(s for s in corpus.build_catalog() if s.path == "bach/bwv66.6.mxl")
    score = m21corpus.parse("bach/bwv66.6.mxl")
    expected = sorted(len(p.stripTies().flatten().notes) for p in score.parts)
    for seed in range(4):
        arr = arrangement.arrange(source, seed=seed, target_seconds=120.0, drums=False)
        assert sorted(len(i.notes) for i in arr.instruments) == expected
        got_classes = sorted((n.pitch - arr.transpose) % 12 for i in arr.instruments for n in i.notes)
        want_classes = sorted(n.pitch.midi % 12 for p in score.parts for n in p.stripTies().flatten().notes)
        assert got_classes == want_classes
        for inst in arr.instruments:
            lo, hi = arrangement._RANGES[inst.program]
            assert all(lo <= n.pitch <= hi for n in inst.notes)
            by_pitch = {}
            for n in sorted(inst.notes, key=lambda n: n.start):
                assert n.end - n.start >= arrangement.MIN_NOTE_SECONDS
                assert n.start >= by_pitch.get(n.pitch, 0.0) - 1e-9, "same-pitch notes overlap"
                by_pitch[n.pitch] = n.end


def _onset_offsets(audio: np.ndarray, midi_onsets: np.ndarray, *, backtrack: bool) -> np.ndarray:
    """Signed (audio - nearest MIDI) onset differences in seconds, for detected onsets within 100 ms of a note-on."""
    import librosa

    detected = librosa.onset.onset_detect(y=audio, sr=16000, hop_length=64, backtrack=backtrack, units="time")
    diffs = np.array([t - midi_onsets[np.argmin(np.abs(midi_onsets - t))] for t in detected])
    return diffs[np.abs(diffs) < 0.1]


def test_audio_is_aligned_with_the_midi_without_drift():
    """A chorale on piano (FluidR3), rendered as a track's stems are. Measured (hop 4 ms): peak-picked onsets trail
    the MIDI by a median 18-20 ms on the upper voices and 28 ms on the bass (slower attack), 8-13 ms when backtracked
    to the energy minimum; the first and last thirds of a stem agree within 2 ms. A stem laid out 3 stems later in the
    shared fluidsynth render has the same onset offset (events snap to 64-sample blocks, so samples differ slightly)."""
    source = next(s for s in corpus.build_catalog() if s.path == "bach/bwv66.6.mxl")
    arr = arrangement.arrange(source, seed=3, target_seconds=120.0, drums=False)
    melody = arr.instruments[0]
    melody.program = 0
    stems = [arrangement.copy_instrument(melody) for _ in range(4)]
    num_samples = int((arr.end_seconds + 1.0) * 16000)
    audio = rendering.render_stems(stems, rendering.soundfont_path("FluidR3_GM.sf2"), num_samples=num_samples)
    midi_onsets = np.unique(np.round([n.start for n in melody.notes], 4))
    diffs = _onset_offsets(audio[0], midi_onsets, backtrack=False)
    assert len(diffs) >= 0.9 * len(midi_onsets)
    assert np.median(np.abs(diffs)) <= 0.030
    third = len(diffs) // 3
    assert abs(np.median(diffs[:third]) - np.median(diffs[-third:])) <= 0.010, "onset offset drifts within the stem"
    assert np.median(np.abs(_onset_offsets(audio[0], midi_onsets, backtrack=True))) <= 0.015
    # Stem 3 was rendered ~3 track lengths later in the same fluidsynth call: same audio, no drift.
    xcorr = np.correlate(audio[3][16000:48000], audio[0][16000 - 256:48000 + 256], mode="valid")
    lag = 256 - int(np.argmax(xcorr))
    assert abs(lag) <= 64
    later = _onset_offsets(audio[3], midi_onsets, backtrack=False)
    assert len(later) >= 0.9 * len(midi_onsets)
    assert abs(np.median(later) - np.median(diffs)) <= 0.005


def test_missing_fluidsynth_says_run_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(InputError, match="scripts/setup.sh"):
        corpus.build_corpus(tmp_path / "out", minutes=1, seed=0, workers=1, progress=False)
    assert cli_main(["build-corpus", "--out", str(tmp_path / "out"), "--minutes", "1", "--no-progress"]) == 2


def test_fluidsynth_failure_names_the_stem(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "fluidsynth"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'fluidsynth: error: cannot load soundfont' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    job = next(j for j in corpus.Planner(1, 0).next_jobs() if j.split == "train")
    with pytest.raises(RuntimeError, match=r"stem S00 .*cannot load soundfont"):
        corpus.build_track(job, tmp_path)
    assert not list(tmp_path.glob(".Track*")) and not (tmp_path / "train").exists()


def test_slakh_converter_reads_the_corpus_unchanged(built, tmp_path):
    root, _ = built
    out = tmp_path / "prepared"
    assert cli_main(["prepare-data", "slakh", "--root", str(root), "--out", str(out)]) == 0
    from mt3.data.records import read_records, shard_paths

    for split in corpus.SPLITS:
        records = {r.id: r for r in read_records(shard_paths(out, split))}
        tracks = sorted((root / split).glob("Track*"))
        assert sorted(records) == [t.name for t in tracks]
        for track in tracks:
            rec = records[track.name]
            want_notes = sum(len(pretty_midi.PrettyMIDI(str(p)).instruments[0].notes)
                             for p in sorted((track / "MIDI").glob("*.mid")))
            assert len(rec.sequence.notes) == want_notes
            mix, _ = sf.read(str(track / "mix.flac"), dtype="float32")
            assert len(rec.audio) == len(mix) and np.abs(rec.audio - mix).max() < 1e-4
            meta = yaml.safe_load((track / "metadata.yaml").read_text())
            assert {(n.is_drum, n.program) for n in rec.sequence.notes} == {
                (s["is_drum"], 0 if s["is_drum"] else s["program_num"]) for s in meta["stems"].values()}


def test_per_stem_soundfonts_blend_the_diverse_banks_and_keep_the_test_timbre(tmp_path):
    """Timbre diversity: each train/validation stem is rendered with a bank drawn from the pool (mixes blend banks,
    stems stay audible), the test split keeps MuseScore General, and a MuseScore bank is refused for training."""
    out = tmp_path / "diverse"
    rc = cli_main(["build-corpus", "--out", str(out), "--minutes", "2", "--seed", "5", "--workers", "1",
                   "--soundfonts", "diverse", "--per-stem-soundfonts", "--no-progress"])
    assert rc == 0
    summary = yaml.safe_load((out / "corpus.json").read_text())
    assert summary["soundfonts"] == list(rendering.DIVERSE_TRAIN_SOUNDFONTS) and summary["per_stem_soundfonts"]
    used: set[str] = set()
    blended = 0
    for track in _tracks(out):
        meta = yaml.safe_load((track / "metadata.yaml").read_text())
        fonts = [s["plugin_name"] for s in meta["stems"].values()]
        for name in meta["stems"]:
            stem, _ = sf.read(str(track / "stems" / f"{name}.flac"))
            assert np.abs(stem).max() > 1e-4, f"{track.name}/{name} is silent"
        if track.parent.name == "test":
            assert set(fonts) == {"MuseScore_General_Lite.sf3"}
        else:
            assert set(fonts) <= set(rendering.DIVERSE_TRAIN_SOUNDFONTS)
            used |= set(fonts)
            blended += len(set(fonts)) > 1
    assert blended >= 1 and len(used) >= 3
    with pytest.raises(InputError, match="test timbre"):
        corpus.build_corpus(tmp_path / "bad", minutes=1, soundfonts=("MuseScore_General_Lite.sf3",))


def test_timidity_renders_the_held_out_timbre_aligned_with_the_midi(tmp_path):
    """`render_midi` with TiMidity++ + freepats (the held-out validation timbre of benchmarks/heldout.py): the exact
    length asked for, audible, and a chorale's piano onsets within 30 ms (median) of the MIDI, as fluidsynth's are."""
    source = next(s for s in corpus.build_catalog() if s.path == "bach/bwv66.6.mxl")
    arr = arrangement.arrange(source, seed=3, target_seconds=30.0, drums=False)
    melody = arrangement.copy_instrument(arr.instruments[0])
    melody.program = 0
    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    pm.instruments.append(melody)
    midi = tmp_path / "melody.mid"
    pm.write(str(midi))
    num_samples = int((arr.end_seconds + 1.0) * 16000)
    audio = rendering.render_midi(midi, rendering.TIMIDITY_FREEPATS, num_samples=num_samples)
    assert audio.shape == (num_samples,) and audio.dtype == np.float32 and np.abs(audio).max() > 0.01
    midi_onsets = np.unique(np.round([n.start for n in melody.notes], 4))
    diffs = _onset_offsets(audio, midi_onsets, backtrack=False)
    assert len(diffs) >= 0.8 * len(midi_onsets)
    assert np.median(np.abs(diffs)) <= 0.030
