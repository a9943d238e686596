"""Renders GM MIDI stems to audio with Debian's fluidsynth, and mixes them the way Slakh2100 does.

Why one fluidsynth call per track: a call costs the soundfont load (0.1-0.2 s for .sf2, 1.3 s for the test split's
.sf3), more than rendering half a minute of audio. fluidsynth's file renderer writes one stereo pair only, so the
stems of a track are laid out one after another in time (each on its own MIDI channel, separated by a silent gap longer
than any release tail) and cut apart afterwards. Each cut is exactly what rendering `MIDI/Sxx.mid` alone gives, up to
fluidsynth's 64-sample event granularity and the last millisecond of a reverb tail.

The mix is the sum of the stems, peak-normalised to `target_peak` dBFS with the same gain applied to every stem, so
`mix == sum(stems)` holds for the files on disk (up to 16-bit rounding), as in Slakh2100.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mt3.errors import InputError

SAMPLE_RATE = 16000
FLUIDSYNTH_GAIN = 0.3  # RENDERING.md: 0.5 clips loud tutti with FluidR3/TimGM6mb
TAIL_SECONDS = 1.0  # kept after the last note-off (release + reverb)
GAP_SECONDS = 3.0  # silence between stems laid out in time: longer than any release tail we keep
SOUNDFONT_DIRS = ("/usr/share/sounds/sf2", "/usr/share/sounds/sf3")
TRAIN_SOUNDFONTS = ("FluidR3_GM.sf2", "TimGM6mb.sf2")
# More GM banks for timbre diversity (issue 16; RENDERING.md "More timbres"): Csound's GM bank and an OPL3 FM bank.
# FluidR3Mono/FluidR3_GS are left out: the same samples as FluidR3_GM. Every MuseScore General variant stays out of
# training (the test timbre), and timidity + freepats too (the validation timbre of benchmarks/heldout.py).
DIVERSE_TRAIN_SOUNDFONTS = TRAIN_SOUNDFONTS + ("sf_GMbank.sf2", "OPL-3_FM_128M.sf2")
TEST_SOUNDFONTS = ("MuseScore_General_Lite.sf3",)
SETUP_HINT = "run scripts/setup.sh (installs fluidsynth and the GM soundfonts)"


def soundfont_path(name: str) -> Path:
    """Absolute path of a soundfont by file name; InputError pointing at scripts/setup.sh when it is missing."""
    for d in SOUNDFONT_DIRS:
        p = Path(d) / name
        if p.exists():
            return p
    raise InputError(Path(SOUNDFONT_DIRS[0]) / name, f"soundfont not found: {SETUP_HINT}")


def check_renderer(soundfonts: tuple[str, ...] = TRAIN_SOUNDFONTS + TEST_SOUNDFONTS) -> str:
    """Fails early, with one clear line, when fluidsynth or a soundfont is missing. Returns the fluidsynth path."""
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise InputError("fluidsynth", f"not found on PATH: {SETUP_HINT}")
    for name in soundfonts:
        soundfont_path(name)
    return exe


def _run_renderer(cmd: list[str], wav_path: str | os.PathLike) -> None:
    """Runs one offline render; a missing program, a failed exit or an empty WAV (header only) is an error that
    names the renderer and its last line of output."""
    name = cmd[0]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as err:
        raise InputError(name, f"not found on PATH: {SETUP_HINT}") from err
    if proc.returncode != 0 or not Path(wav_path).exists() or Path(wav_path).stat().st_size <= 44:
        msg = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise RuntimeError(f"{name} exited with {proc.returncode}: {msg[-1] if msg else 'no output'}")


def run_fluidsynth(midi_path: str | os.PathLike, soundfont: str | os.PathLike, wav_path: str | os.PathLike,
                   *, sample_rate: int = SAMPLE_RATE, gain: float = FLUIDSYNTH_GAIN) -> None:
    """One offline render; float WAV output so nothing clips or gets dithered before our own normalisation.

    Not used: `-o synth.dynamic-sample-loading=1` would halve the .sf3 load (1.1 s instead of 2.7 s CPU) but renders
    some drum hits differently (up to 0.27 full scale) from a normal load, so it is not the reference sound.
    """
    cmd = ["fluidsynth", "-ni", "-q", "-F", str(wav_path), "-r", str(sample_rate), "-g", str(gain),
           "-O", "float", "-T", "wav", str(soundfont), str(midi_path)]
    _run_renderer(cmd, wav_path)


TIMIDITY_FREEPATS = "timidity+freepats"  # a second synth engine and sample set: the held-out validation timbre


def run_timidity(midi_path: str | os.PathLike, wav_path: str | os.PathLike, *, sample_rate: int = SAMPLE_RATE,
                 config: str = "/etc/timidity/freepats.cfg") -> None:
    """One offline render with TiMidity++ and the freepats samples (RENDERING.md "More timbres")."""
    # --preserve-silence: TiMidity++ otherwise drops the silence before the first note, moving audio off the labels
    cmd = ["timidity", "-c", config, "--preserve-silence", "-Ow", "-s", str(sample_rate), "-o", str(wav_path),
           str(midi_path)]
    _run_renderer(cmd, wav_path)


def render_midi(midi_path: str | os.PathLike, bank: str, *, num_samples: int,
                sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A whole MIDI file as one mono float32 render of exactly `num_samples` samples (cut or zero-padded): with
    fluidsynth and the soundfont file `bank`, or with TiMidity++ + freepats when `bank` is TIMIDITY_FREEPATS."""
    with tempfile.TemporaryDirectory(prefix="mt3-render-") as tmp:
        wav_path = Path(tmp) / "out.wav"
        if bank == TIMIDITY_FREEPATS:
            run_timidity(midi_path, wav_path, sample_rate=sample_rate)
        else:
            run_fluidsynth(midi_path, soundfont_path(bank), wav_path, sample_rate=sample_rate)
        audio = read_mono(wav_path)[:num_samples]
    return np.pad(audio, (0, num_samples - len(audio))).astype(np.float32)


def read_mono(path: str | os.PathLike) -> np.ndarray:
    """fluidsynth writes stereo: average the channels (its GM pan positions are mostly near the centre)."""
    import soundfile as sf

    audio, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.mean(axis=1)


def _shifted_copy(instrument, shift: float):
    inst = copy.deepcopy(instrument)
    for n in inst.notes:
        n.start += shift
        n.end += shift
    for c in inst.control_changes:  # a sustain pedal moves with its stem
        c.time += shift
    return inst


def render_stems(instruments: list, soundfont: str | os.PathLike, *, num_samples: int,
                 sample_rate: int = SAMPLE_RATE, gain: float = FLUIDSYNTH_GAIN, gap: float = GAP_SECONDS,
                 label: str = "track") -> np.ndarray:
    """Renders each `pretty_midi.Instrument` as its own stem; returns float32 [num_stems, num_samples].

    All stems go through ONE fluidsynth call (see module docstring). Non-drum stems get distinct MIDI channels, so at
    most 15 of them plus one drum stem. When that call fails, each stem is rendered alone so the error names the
    stem that breaks fluidsynth.
    """
    import pretty_midi

    melodic = [i for i in instruments if not i.is_drum]
    if len(melodic) > 15 or len(instruments) - len(melodic) > 1:
        raise ValueError(f"{label}: at most 15 melodic stems and 1 drum stem per track, got {len(instruments)}")
    stride = num_samples + int(round(gap * sample_rate))
    pm = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=120.0)
    for i, inst in enumerate(instruments):
        pm.instruments.append(_shifted_copy(inst, i * stride / sample_rate))
    with tempfile.TemporaryDirectory(prefix="mt3-render-") as tmp:
        midi_path, wav_path = Path(tmp) / "stems.mid", Path(tmp) / "stems.wav"
        pm.write(str(midi_path))
        try:
            run_fluidsynth(midi_path, soundfont, wav_path, sample_rate=sample_rate, gain=gain)
        except RuntimeError as err:
            _find_failing_stem(instruments, soundfont, Path(tmp), sample_rate, gain, label)
            raise RuntimeError(f"{label}: {err} (soundfont {soundfont})") from err
        audio = read_mono(wav_path)
    out = np.zeros((len(instruments), num_samples), np.float32)
    for i in range(len(instruments)):
        seg = audio[i * stride: i * stride + num_samples]
        out[i, : len(seg)] = seg
    return out


def _find_failing_stem(instruments, soundfont, tmp: Path, sample_rate: int, gain: float, label: str) -> None:
    import pretty_midi

    for i, inst in enumerate(instruments):
        pm = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=120.0)
        pm.instruments.append(copy.deepcopy(inst))
        midi_path, wav_path = tmp / f"S{i:02d}.mid", tmp / f"S{i:02d}.wav"
        pm.write(str(midi_path))
        try:
            run_fluidsynth(midi_path, soundfont, wav_path, sample_rate=sample_rate, gain=gain)
        except RuntimeError as err:
            raise RuntimeError(f"{label}: stem S{i:02d} (program {inst.program}, drum={inst.is_drum}) failed to "
                               f"render with {soundfont}: {err}") from err


@dataclass(frozen=True)
class Mix:
    """Normalised stems and their sum, plus what Slakh's metadata records about the normalisation."""

    stems: np.ndarray  # float32 [num_stems, num_samples], already multiplied by `gain`
    mix: np.ndarray  # float32 [num_samples] == stems.sum(0)
    gain: float  # linear gain applied to the raw fluidsynth output
    target_peak: float  # dBFS

    @property
    def gain_db(self) -> float:
        return 20.0 * math.log10(self.gain)


def mix_stems(stems: np.ndarray, *, target_peak: float = -1.0) -> Mix:
    """Peak-normalises the mix to `target_peak` dBFS; the same gain goes to every stem so the mix stays their sum.

    The peak is taken over the mix AND every stem (a stem can peak above the mix when parts cancel), so no file clips.
    """
    stems = np.asarray(stems, np.float32)
    mix = stems.sum(axis=0)
    peak = float(max(np.abs(mix).max(initial=0.0), np.abs(stems).max(initial=0.0)))
    if peak <= 1e-6:
        raise RuntimeError("rendered audio is silent")
    gain = 10.0 ** (target_peak / 20.0) / peak
    stems = stems * np.float32(gain)
    return Mix(stems=stems, mix=stems.sum(axis=0), gain=gain, target_peak=target_peak)


def rms_db(x: np.ndarray) -> float | None:
    """RMS level in dBFS: our stand-in for Slakh's `integrated_loudness` (no LUFS meter in the environment)."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    return None if rms <= 1e-9 else round(20.0 * math.log10(rms), 2)


def write_flac(path: str | os.PathLike, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """16-bit mono FLAC, written atomically (Slakh's redux format, at our 16 kHz)."""
    import soundfile as sf

    from mt3.data.records import atomic_write

    with atomic_write(path, "wb") as f:
        sf.write(f, np.clip(audio, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
