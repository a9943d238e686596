"""Issue #12 through the real `mt3` command line: broken-checkpoint recovery, silence and truncated audio, output
names that never collide (a Slakh-style mix.flac tree), file modes under the umask, --sonify, the notes CSV, duplicate
drum notes, --version, both flag spellings, gin documented in every command that takes it, the default model.

The model is the tiny trained one of test_inference (`build_tiny_model`, built once per session).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from helpers import MT3, REPO, build_tiny_model, random_inference_model, subprocess_env

from mt3 import cli, midi_io, model_loading
from mt3.audio import write_wav


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory)


def run(args: list[str], capsys) -> tuple[int, str]:
    code = cli.main(args)
    return code, capsys.readouterr().err


def common(tiny, out: Path) -> list[str]:
    return ["-o", str(out), "--checkpoint", str(tiny.model_dir), "--no-progress", *tiny.gin_flags]


def corrupt_step(model_dir: Path, step: int) -> None:
    """Cuts every chunk file of one checkpoint step short, as an interrupted copy or a full disk leaves it."""
    for chunk in (model_dir / "checkpoints" / str(step) / "state").rglob("d/*"):
        with open(chunk, "r+b") as f:
            f.truncate(max(1, chunk.stat().st_size // 3))


# ---------------------------------------------------------------------------------------------------------------------
# a truncated latest checkpoint


def test_transcribe_falls_back_to_the_newest_checkpoint_that_restores(tiny, tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny.model_dir, model_dir)
    corrupt_step(model_dir, 160)
    args = ["transcribe", str(tiny.wav(3)), "-o", str(tmp_path / "out"), "--checkpoint", str(model_dir),
            "--no-progress", *tiny.gin_flags]
    code, err = run(args, capsys)
    assert code == 0, err
    warning = [line for line in err.splitlines() if "does not restore" in line]
    assert len(warning) == 1 and f"checkpoint step 160 ({model_dir / 'checkpoints' / '160'})" in warning[0]
    assert "Traceback" not in err and "(step 80)" in err  # the model line names the step used
    assert (tmp_path / "out" / "track3.mid").is_file()
    assert (model_dir / "checkpoints" / "160").is_dir()  # transcribe never moves or deletes anything

    # an explicit bad --step, and no step restoring at all: one line each, exit 2
    code, err = run([*args, "--step", "160", "--overwrite"], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith(
        f"mt3 transcribe: error: {model_dir / 'checkpoints' / '160'}: checkpoint does not restore: ")
    corrupt_step(model_dir, 80)
    code, err = run([*args, "--overwrite"], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("mt3 transcribe: error: ") and "none of the 2 checkpoints restores" in last
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------------------------------
# inputs: silence, very short, truncated; -o on a file


def test_silence_and_short_files_give_zero_notes_truncated_flac_fails(tiny, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_wav(inputs / "silent.wav", np.zeros(3 * 16000, np.float32))
    soundfile.write(inputs / "empty.wav", np.zeros(0, np.float32), 16000)
    soundfile.write(inputs / "blip.wav", 0.3 * np.sin(np.arange(400) / 3).astype(np.float32), 44100)  # 9 ms
    t = np.arange(20 * 44100) / 44100
    noise = 0.01 * np.random.default_rng(0).standard_normal(len(t))
    soundfile.write(tmp_path / "full.flac", (0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(np.pi * t) + noise), 44100)
    (inputs / "cut.flac").write_bytes((tmp_path / "full.flac").read_bytes()[:20_000])  # 20 KB of a 20 s flac
    out = tmp_path / "out"
    code, err = run(["transcribe", str(inputs), "--json", *common(tiny, out)], capsys)
    assert code == 2  # the truncated file fails alone; the others are written
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "cut.flac: truncated or corrupt: decoding stopped at " in errors[0]
    assert "of the 20.00 s the file declares" in errors[0]
    for name in ("silent", "empty"):
        assert json.loads((out / f"{name}.notes.json").read_text()) == []
        assert f"{inputs / name}.wav: the audio is silent" in err
    assert (out / "blip.mid").is_file() and not (out / "cut.mid").exists()
    code, err = run(["transcribe", str(inputs / "silent.wav"), "--overwrite", *common(tiny, out)], capsys)
    assert code == 0 and "pass allow_silence" not in err


def test_output_dir_that_is_a_file_is_one_line_exit_2(tmp_path, capsys):
    write_wav(tmp_path / "a.wav", np.sin(np.arange(16000) / 10).astype(np.float32))
    (tmp_path / "taken").write_text("not a directory")
    code, err = run(["transcribe", str(tmp_path / "a.wav"), "-o", str(tmp_path / "taken")], capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"mt3 transcribe: error: {tmp_path / 'taken'}: exists and is not a directory "
                                        "(-o names the directory the outputs go to)"]


# ---------------------------------------------------------------------------------------------------------------------
# output names, modes, sonify, CSV


def test_output_names_mirror_the_input_tree_and_never_collide(tmp_path):
    from mt3.transcription import expand_inputs

    root = tmp_path / "slakh"
    for track in ("Track00001", "Track00002"):
        (root / track).mkdir(parents=True)
        write_wav(root / track / "mix.flac", np.zeros(10, np.float32))
    for ext in ("mp3", "ogg", "wav"):
        write_wav(root / f"song.{ext}", np.zeros(10, np.float32))
    write_wav(root / "solo.wav", np.zeros(10, np.float32))
    items, errors = expand_inputs([root])
    assert not errors
    assert sorted(str(i.name) for i in items) == ["Track00001/mix", "Track00002/mix", "solo", "song.mp3",
                                                  "song.ogg", "song.wav"]
    # files named directly (as a shell glob gives them) keep their path below their deepest common directory
    items, _ = expand_inputs([root / "Track00001" / "mix.flac", root / "Track00002" / "mix.flac"])
    assert [str(i.name) for i in items] == ["Track00001/mix", "Track00002/mix"]
    items, _ = expand_inputs([root / "solo.wav", root / "solo.wav"])
    assert [str(i.name) for i in items] == ["solo"]  # one file named twice is transcribed once


def test_mix_flac_tree_modes_sonify_and_csv(tiny, tmp_path, capsys, monkeypatch):
    root = tmp_path / "slakh"
    for i, track in ((3, "Track00001"), (4, "Track00002")):
        (root / track).mkdir(parents=True)
        samples, rate = soundfile.read(tiny.wav(i), dtype="float32")
        soundfile.write(root / track / "mix.flac", samples, rate)
    out = tmp_path / "out"
    old_umask = os.umask(0o022)
    try:
        code, err = run(["transcribe", str(root), "--csv", "--json", "--png", "--sonify", *common(tiny, out)], capsys)
    finally:
        os.umask(old_umask)
    assert code == 0, err
    for track in ("Track00001", "Track00002"):
        names = sorted(p.name for p in (out / track).iterdir())
        assert names == ["mix.mid", "mix.notes.csv", "mix.notes.json", "mix.png", "mix.sonified.wav"]
        for path in (out / track).iterdir():
            assert path.stat().st_mode & 0o777 == 0o644, path  # the umask's mode, not mkstemp's 0600
    notes = json.loads((out / "Track00001" / "mix.notes.json").read_text())
    rows = (out / "Track00001" / "mix.notes.csv").read_text().splitlines()
    assert rows[0] == "onset,offset,pitch,velocity,program,is_drum,confidence" and len(rows) == len(notes) + 1
    assert {row.split(",")[5] for row in rows[1:]} <= {"0", "1"}
    assert all(0.0 < float(row.split(",")[6]) <= 1.0 for row in rows[1:])  # per-note confidence, a probability
    wav, rate = soundfile.read(out / "Track00001" / "mix.sonified.wav")
    seconds = soundfile.info(str(root / "Track00001" / "mix.flac")).duration
    assert rate == 44100 and np.abs(wav).max() > 0.01
    assert wav.shape == (round(seconds * 44100), 2)  # the input's duration (no release tail), stereo
    assert "sonified with fluidsynth" in err or shutil.which("fluidsynth") is None


def test_sonify_without_fluidsynth_uses_a_simple_synth(tmp_path, monkeypatch):
    import note_seq

    from mt3 import transcription

    ns = note_seq.NoteSequence()
    ns.notes.add(pitch=69, start_time=0.0, end_time=0.5, velocity=100, program=0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert transcription.sonify(ns, tmp_path / "a.wav") == "pretty_midi sine synthesis"
    wav, rate = soundfile.read(tmp_path / "a.wav")
    assert wav.shape == (rate // 2, 2)  # until the last note ends; stereo like fluidsynth's renders
    spectrum = np.abs(np.fft.rfft(wav[: rate // 2, 0]))
    assert abs(np.argmax(spectrum) * rate / (rate // 2) - 440) < 5  # the note's pitch
    empty = note_seq.NoteSequence()
    assert transcription.sonify(empty, tmp_path / "silent.wav", seconds=2.0) == "silence"
    assert soundfile.read(tmp_path / "silent.wav")[0].shape == (2 * 44100, 2)  # the input's length, stereo


# ---------------------------------------------------------------------------------------------------------------------
# duplicate drum notes


def test_duplicate_drum_hits_are_removed_when_stitching_and_counted():

    from mt3.event_codec import Event

    im = random_inference_model()
    codec = im.codec
    hit = [codec.encode_event(Event("drum", 36))]
    # one segment: at 0.5 s (shift 50) the same kick three times and a snare; at 1.0 s (shift 100) the kick again
    tokens = np.array([codec.encode_event(Event("tie", 0)), codec.encode_event(Event("shift", 50)),
                       codec.encode_event(Event("velocity", 1)), *hit, *hit, *hit,
                       codec.encode_event(Event("drum", 38)), codec.encode_event(Event("shift", 100)), *hit], np.int32)
    result = im.stitch([tokens], [0.0], 2.048)
    hits = sorted((round(n.start_time, 3), n.pitch) for n in result.ns.notes)
    assert hits == [(0.5, 36), (0.5, 38), (1.0, 36)]
    assert result.duplicate_notes_removed == 2
    assert len(midi_io.midi_round_trip(result.ns).notes) == 3


def test_remove_duplicate_notes_keeps_distinct_pitched_notes():
    import note_seq

    ns = note_seq.NoteSequence()
    for start, end, pitch, program in [(0, 1, 60, 0), (0, 1, 60, 0), (0, 2, 60, 0), (0, 1, 60, 40), (0, 1, 62, 0)]:
        ns.notes.add(start_time=start, end_time=end, pitch=pitch, program=program, velocity=100)
    assert midi_io.remove_duplicate_notes(ns) == 1
    assert len(ns.notes) == 4


# ---------------------------------------------------------------------------------------------------------------------
# the command line itself


def test_version_flag_spellings_and_gin_in_help(capsys):
    result = subprocess.run(MT3 + ["--version"], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "mt3 0.1.0"
    from mt3.commands import transcribe

    parser = __import__("argparse").ArgumentParser()
    transcribe.add_arguments(parser)
    for spelling in (["--batch_size", "3"], ["--batch-size", "3"], ["--batch_size=3"], ["--output_dir", "x"]):
        argv = cli.normalize_flag_spelling(["a.wav", "-o", "o", *spelling], parser)
        args = parser.parse_args(argv)
        assert args.batch_size == 3 or args.output_dir == "x"
    for command in ("transcribe", "eval", "serve", "train"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = capsys.readouterr().out
        assert "--gin.NAME=VALUE" in text and "--gin_file=FILE" in text, command


def test_default_model_is_used_and_named_without_checkpoint(tiny, tmp_path, capsys, monkeypatch):
    from mt3 import pretrained

    monkeypatch.setattr(pretrained, "default_model_dir", lambda: tiny.model_dir)
    code, err = run(["transcribe", str(tiny.wav(4)), "-o", str(tmp_path / "out"), "--no-progress",
                     *tiny.gin_flags], capsys)
    assert code == 0, err
    assert f"using the default model {tiny.model_dir}" in err and f"model {tiny.model_dir} (step 160)" in err
    monkeypatch.setattr(pretrained, "default_model_dir", lambda: tmp_path / "nowhere")
    code, err = run(["transcribe", str(tiny.wav(4)), "-o", str(tmp_path / "out2"), "--no-progress"], capsys)
    assert code == 2 and f"no default model: {tmp_path / 'nowhere'} does not exist" in err


def test_transcribe_refuses_unknown_macros_and_bad_types(tiny, tmp_path, capsys):
    for binding, expected in (("--gin.NO_SUCH=1", "--gin.NO_SUCH=1: unknown macro NO_SUCH"),
                              ("--gin.INFER_BATCH_SIZE='x'", "INFER_BATCH_SIZE takes an int"),
                              ("--gin.INFER_BATCH_SIZE=(", "bad gin binding --gin.INFER_BATCH_SIZE=(: ")):
        code, err = run(["transcribe", str(tiny.wav(4)), *common(tiny, tmp_path / "out"), binding], capsys)
        assert code == 2 and expected in err.strip().splitlines()[-1], err
        assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_transcribe_in_a_fresh_process_reads_config_gin_without_the_training_loop(tiny, tmp_path):
    """config.gin names train/DatasetConfig etc. (short names); a fresh `mt3 transcribe` never imports
    mt3.training.train."""
    code = ("import sys; from mt3 import cli; rc = cli.main(sys.argv[1:]); "
            "assert 'mt3.training.train' not in sys.modules, 'imported the training loop'; sys.exit(rc)")
    result = subprocess.run([MT3[0], "-c", code, "transcribe", str(tiny.wav(4)), *common(tiny, tmp_path / "out")],
                            cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "track4.mid").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# issue 18: checked before the work, all-or-nothing outputs, what a directory holds, quiet input


def test_unwritable_output_and_bad_batch_size_fail_before_the_model_loads(tmp_path, capsys):
    """No model exists here: reaching the model would be a different error, so these lines prove the order."""
    write_wav(tmp_path / "a.wav", np.sin(np.arange(16000) / 10).astype(np.float32))
    no_model = ["--checkpoint", str(tmp_path / "no_model")]
    code, err = run(["transcribe", str(tmp_path / "a.wav"), "-o", str(tmp_path / "o"), "--batch-size", "0",
                     *no_model], capsys)
    assert code == 2 and err.strip() == "mt3 transcribe: error: --batch-size must be >= 1, got 0"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root ignores permissions; a read-only mount does not
        locked = next((Path(p) for p in ("/proc/sys", "/sys") if Path(p).is_dir() and not os.access(p, os.W_OK)),
                      None)
        if locked is None:
            pytest.skip("no unwritable directory available to this user")
    out = locked / "out"
    code, err = run(["transcribe", str(tmp_path / "a.wav"), "-o", str(out), *no_model], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"mt3 transcribe: error: {out}: cannot be created: {locked} is not writable (read-only file system or no "
        "permission); choose another -o"]


def test_outputs_of_a_file_appear_together_or_not_at_all(tiny, tmp_path, capsys):
    """A write that fails part-way (the file-size limit here: EFBIG, as a full disk gives ENOSPC) keeps none of that
    file's outputs and names the user's path, so a rerun is not refused over a half-written set."""
    import resource
    import signal

    from mt3 import transcription

    model = model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings)
    out = tmp_path / "out"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))  # the MIDI fits, the PNG does not
    try:
        failures = transcription.transcribe_files([tiny.wav(3)], out, png=True, notes_json=True, progress=False,
                                                  model=model)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert len(failures) == 1 and failures[0].startswith(f"{out / 'track3.png'}: cannot write output ("), failures
    assert "none of this file's outputs were kept" in failures[0] and ".partial" not in failures[0]
    assert list(out.iterdir()) == []
    assert transcription.transcribe_files([tiny.wav(3)], out, png=True, notes_json=True, progress=False,
                                          model=model) == []
    assert sorted(p.name for p in out.iterdir()) == ["track3.mid", "track3.notes.json", "track3.png"]


def test_directories_take_every_readable_format_skip_own_outputs_and_say_so(tiny, tmp_path, capsys):
    from mt3 import transcription
    from mt3.audio import AUDIO_EXTENSIONS

    samples, rate = soundfile.read(tiny.wav(3), dtype="float32")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, fmt in (("a.aiff", "AIFF"), ("b.au", "AU"), ("c.oga", "OGG"), ("d.wav", "WAV")):
        soundfile.write(inputs / name, samples[: rate * 2], rate, format=fmt)
        assert Path(name).suffix in AUDIO_EXTENSIONS
    (inputs / "notes.txt").write_text("not audio")
    model = model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings)
    assert transcription.transcribe_files([inputs], inputs, sonify_wav=True, progress=False, model=model) == []
    err = capsys.readouterr().err
    assert "skipped 1 not audio (.txt 1)" in err
    for stem in "abcd":
        assert (inputs / f"{stem}.mid").is_file() and soundfile.info(str(inputs / f"{stem}.sonified.wav")).channels == 2
    # a rerun into the input folder: its own renders are skipped (and counted), not transcribed as new inputs
    assert transcription.transcribe_files([inputs], inputs, overwrite=True, progress=False, model=model) == []
    err = capsys.readouterr().err
    assert "4 written by mt3 transcribe (*.sonified.wav)" in err and "sonified.sonified" not in err
    assert not list(inputs.glob("*.sonified.mid"))


def test_quiet_recording_gets_one_line_about_its_level(tiny, tmp_path, capsys):
    from mt3 import transcription

    samples, rate = soundfile.read(tiny.wav(3), dtype="float32")
    write_wav(tmp_path / "quiet.wav", samples / np.abs(samples).max() * 10 ** (-55 / 20), rate, subtype="FLOAT")
    write_wav(tmp_path / "loud.wav", samples, rate, subtype="FLOAT")
    model = model_loading.load_inference_model(tiny.model_dir, gin_bindings=tiny.bindings)
    assert transcription.transcribe_files([tmp_path / "quiet.wav", tmp_path / "loud.wav"], tmp_path / "out",
                                          progress=False, model=model) == []
    warnings = [line for line in capsys.readouterr().err.splitlines() if "very quiet" in line]
    assert len(warnings) == 1 and "quiet.wav: the audio is very quiet (peak -55 dBFS" in warnings[0]
    assert "normalised to its training peak of -1 dBFS" in warnings[0]  # the local recipes' INPUT_PEAK_DB


def test_train_checks_task_data_and_model_dir_before_writing_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MT3_DATA_DIR", str(tmp_path / "no_data"))
    model_dir = tmp_path / "m"
    base = ["train", "--gin_file=local_tiny.gin", "--model_dir", str(model_dir)]
    code, err = run([*base, "--gin.MIXTURE_OR_TASK_NAME='local_notes_ties_vb1_trian'"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "unknown task or mixture 'local_notes_ties_vb1_trian' (did you mean local_notes_ties_vb1_train" in err
    code, err = run(base, capsys)
    assert code == 2 and err.count("\n") == 1 and "split 'train' of dataset 'local' is not prepared" in err, err
    assert not model_dir.exists()
    (tmp_path / "a_file").write_text("")
    code, err = run(["train", "--gin_file=local_tiny.gin", "--model_dir", str(tmp_path / "a_file")], capsys)
    assert code == 2 and "a_file: exists and is not a directory (--model_dir names a directory)" in err
    code, err = run(["train", "--gin_file=local_tiny.gin", "--model_dir", str(tmp_path / "a_file" / "m")], capsys)
    assert code == 2 and "is a file, not a directory" in err


@pytest.mark.slow
def test_tensorflow_start_up_lines_are_hidden_unless_verbose(tmp_path):
    """`data-stats` imports TensorFlow, whose C++ start-up lines (oneDNN, cuda stubs) used to precede the one error
    line; TF_CPP_MIN_LOG_LEVEL is deliberately unset here, as in a new user's shell."""
    env = {k: v for k, v in subprocess_env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["MT3_DATA_DIR"] = str(tmp_path / "nothing_prepared")
    argv = MT3 + ["data-stats", "local_notes_ties_vb1_train", "--num", "1"]
    quiet = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 2 and quiet.stderr.count("\n") == 1, quiet.stderr
    assert quiet.stderr.startswith("mt3 data-stats: error: ") and "is not prepared" in quiet.stderr
    verbose = subprocess.run(argv + ["--verbose"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert verbose.returncode == 2 and verbose.stderr.splitlines()[-1] == quiet.stderr.strip()


def test_an_out_of_memory_step_is_one_line_naming_the_knobs():
    """A real XLA:CPU out-of-memory error (a 1 TiB buffer) becomes one line with its size and the batch knobs;
    other errors are left alone (mt3 train re-raises them)."""
    import jax
    import jax.numpy as jnp

    from mt3.commands import train as train_command

    huge = jax.jit(lambda x: jnp.broadcast_to(x, (2**38,)) * 2.0)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - XLA's own error type
        huge(jnp.float32(1.0)).block_until_ready()
    message = train_command.out_of_memory_message(caught.value)
    assert message is not None and "1024.0 GiB" in message and "BATCH_SIZE" in message
    assert "NUM_MICROBATCHES" in message and "\n" not in message
    assert train_command.out_of_memory_message(ValueError("a bad shape")) is None
