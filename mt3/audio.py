"""Loading user audio robustly: any common format, rate and channel count -> mono float32 at 16 kHz.

MT3 loads audio with librosa (`librosa.load(sr=16000)`: decode, average the channels, resample with soxr 'HQ').
We do the same steps directly with soundfile (libsndfile: wav/flac/ogg/mp3/aiff...) + soxr, which is faster and gives
clearer errors, and fall back to audioread (ffmpeg) only for formats libsndfile cannot decode (m4a/aac, ...).
Bad input never reaches the model silently: every problem raises `mt3.errors.InputError(path, problem)` (missing,
unreadable, empty, NaN/Inf, all-zero, absurd sample rate), which the CLI prints as one line and the server
turns into HTTP 400.

No TensorFlow and no JAX here; soundfile/soxr/audioread are imported only when audio is actually read.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from mt3.errors import InputError

DEFAULT_SAMPLE_RATE = 16000
# Sample rates outside this range are treated as a corrupt header rather than audio (telephone 8 kHz .. 768 kHz).
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768000
# A decode this much shorter than the declared length is a truncated file (mp3 headers only estimate their length).
SHORT_DECODE_TOLERANCE_SECONDS = 0.25
SHORT_DECODE_TOLERANCE_FRACTION = 0.02
RESAMPLE_QUALITY = "soxr_hq"  # librosa's default res_type, i.e. what MT3's librosa.load used
# The file extensions `mt3 transcribe DIR` picks up: what libsndfile decodes (wav .. w64) and what the ffmpeg fallback
# decodes (m4a ..). One list, so a directory finds every file that `load_audio` reads when it is named directly.
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".aifc", ".au", ".snd", ".caf",
                    ".w64", ".m4a", ".aac", ".mp4", ".wma", ".webm")
# Peak level below which a recording is called quiet: 40 dB under full scale. The training recordings peak near
# -1 dBFS (the local corpus: every one of 80 tracks of data/corpus_big between -1.2 and -1.0 dBFS, 2026-12-04). A
# model whose config sets INPUT_PEAK_DB (the bundled one) hears every file above SILENCE_PEAK_DB normalised to that
# peak; MT3's imported models hear the level as it is (`quiet_warning` says which).
QUIET_PEAK_DBFS = -40.0
TRAINING_PEAK_DBFS = -1.0


def peak_dbfs(samples: np.ndarray) -> float:
    """Peak level in dB relative to full scale (-inf for silence)."""
    peak = float(np.max(np.abs(samples))) if np.size(samples) else 0.0
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def quiet_warning(samples: np.ndarray, normalised_to: float | None = None) -> str | None:
    """A one-line note when the input peaks far below the level of training audio (None otherwise, and for silence,
    which callers report on its own). `normalised_to`: the peak (dBFS) the model presents its input at
    (`InferenceConfig.input_peak_db`), or None when it transcribes the input as it is."""
    level = peak_dbfs(samples)
    if not math.isfinite(level) or level >= QUIET_PEAK_DBFS:
        return None
    if normalised_to is not None and level <= SILENCE_PEAK_DB:  # `normalize_peak` leaves it as it is
        return (f"the audio is nearly silent (peak {level:.0f} dBFS, at or below the {SILENCE_PEAK_DB:.0f} dBFS this "
                "model takes for a noise floor and does not normalise), so expect no notes: if it holds music, raise "
                f"its level (e.g. normalise the peak to {normalised_to:.0f} dBFS) and transcribe again")
    if normalised_to is not None:
        return (f"the audio is very quiet (peak {level:.0f} dBFS); the model hears it normalised to its training peak "
                f"of {normalised_to:.0f} dBFS, which raises any noise and hum with it")
    return (f"the audio is very quiet (peak {level:.0f} dBFS, far below the {TRAINING_PEAK_DBFS:.0f} dBFS peaks of "
            "the training recordings; this model does not normalise its input), so expect few or no notes: raise "
            "its level (e.g. normalise the peak to -1 dBFS) and transcribe again")


def input_warnings(samples: np.ndarray, sample_rate: int, normalised_to: float | None = None) -> list[str]:
    """Every warning about one input's audio: silence (every sample zero: no notes), else `quiet_warning`.

    Why one function: `mt3 transcribe` prints these lines and `mt3 serve` returns them in "warnings"; built in one
    place, an upload is never silent about what the command line warns of."""
    if not np.any(samples):
        return [f"the audio is silent ({len(samples) / sample_rate:.2f} s, every sample zero): no notes"]
    quiet = quiet_warning(samples, normalised_to)
    return [] if quiet is None else [quiet]


def _check_rate(path, rate, what: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int | float | np.integer | np.floating) or not (
            MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE) or int(rate) != rate:
        raise InputError(path, f"absurd {what} sample rate {rate!r} (expected an integer in "
                               f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)")
    return int(rate)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Mono float32 samples from `from_rate` to `to_rate` with soxr 'HQ' (as librosa.resample(res_type='soxr_hq')).

    The output has exactly ceil(len * to_rate / from_rate) samples (librosa's `fix_length` rule), so lengths are
    predictable and frame counts agree with MT3's.
    """
    import soxr

    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"resample expects mono 1-D samples, got shape {samples.shape}")
    if from_rate == to_rate:
        return samples
    target_len = int(math.ceil(len(samples) * to_rate / from_rate))
    out = soxr.resample(samples, from_rate, to_rate, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)
    if len(out) >= target_len:
        return out[:target_len]
    return np.pad(out, (0, target_len - len(out)))


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _c_stderr_captured(notes: list[str]):
    """Captures what C libraries write to file descriptor 2 (libmpg123's "Note: Illegal Audio-MPEG-Header ..." lines
    on a damaged mp3) into `notes` instead of the user's terminal; the problem is reported once, in our error line."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            notes.extend(line.strip() for line in sink.read().decode(errors="replace").splitlines() if line.strip())


def _decode_soundfile(source) -> tuple[np.ndarray, int, float | None]:
    """[n, channels] float32, the native rate, and the seconds the header declares (None when it does not say)."""
    import soundfile

    notes: list[str] = []
    try:
        with _c_stderr_captured(notes), soundfile.SoundFile(source) as f:
            declared = f.frames / f.samplerate if f.frames > 0 and f.samplerate > 0 else None
            data = f.read(dtype="float32", always_2d=True)
            return data, f.samplerate, declared
    except Exception as err:
        # libsndfile says "File does not exist or is not a regular file" for any file it cannot identify
        message = re.sub(r"Error opening .*?: File does not exist or is not a regular file \(possibly a pipe\?\)\.?",
                         "not a format libsndfile recognises", str(err))
        raise RuntimeError(message + (f" [{notes[0]}]" if notes else "")) from err


def _decode_audioread(path: str) -> tuple[np.ndarray, int, float | None]:
    """Fallback for what libsndfile cannot read (e.g. m4a/aac): audioread's ffmpeg backend, native rate.

    audioread directly rather than librosa.load: same decoder, without importing librosa/numba (tens of seconds
    on a busy machine).
    """
    import audioread

    with audioread.audio_open(path) as f:
        rate, channels = int(f.samplerate), int(f.channels)
        declared = float(f.duration) if f.duration and f.duration > 0 else None  # ffmpeg: from the container
        pcm = b"".join(bytes(block) for block in f)
    if channels <= 0:
        raise ValueError(f"decoder reported {channels} channels")
    data = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0  # audioread yields 16-bit PCM
    return data[: len(data) // channels * channels].reshape(-1, channels), rate, declared


def _riff_data_sizes(path: str | None, data: bytes | None) -> tuple[int, int] | None:
    """(data bytes the header declares, data bytes present) of a RIFF/WAVE file whose data chunk is cut short, else
    None. Streaming writers put 0 or 0xFFFFFFFF there (length unknown): not a truncation."""
    if data is None:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        size = os.path.getsize(path)
    else:
        head, size = bytes(data[: 1 << 16]), len(data)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        chunk, length = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if chunk == b"data":
            present = size - pos - 8
            return (length, present) if length not in (0, 0xFFFFFFFF) and present < length else None
        pos += 8 + length + (length & 1)
    return None


def _check_complete(name, data: np.ndarray, rate, declared: float | None, earlier_errors: list[str]) -> None:
    """A decode that stops well short of the length the header declares is a truncated or corrupt file: transcribing
    the first second of a 20 s file and exiting 0 would hide that. Tolerance: 2 % or 0.25 s (mp3 headers estimate)."""
    if declared is None or not rate:
        return
    decoded = data.shape[0] / rate
    if declared - decoded > max(SHORT_DECODE_TOLERANCE_SECONDS, SHORT_DECODE_TOLERANCE_FRACTION * declared):
        detail = f" ({earlier_errors[0][:120]})" if earlier_errors else ""
        raise InputError(name, f"truncated or corrupt: decoding stopped at {decoded:.2f} s of the {declared:.2f} s "
                               f"the file declares{detail}")


def _decode(name, path: str | None, data: bytes | None) -> tuple[np.ndarray, int]:
    """Decoded [n, channels] float32 and the native rate; InputError if no decoder understands the bytes, or if the
    decode stops short of the length the file declares (`_check_complete`)."""
    errors = []
    try:
        decoded, rate, declared = _decode_soundfile(path if data is None else io.BytesIO(data))
        riff = _riff_data_sizes(path, data)
        if riff is not None and riff[1] > 0:  # libsndfile takes a cut wav's length from what is there
            declared = decoded.shape[0] / rate * riff[0] / riff[1]
        _check_complete(name, decoded, rate, declared, errors)
        return decoded, rate
    except InputError:
        raise
    except Exception as err:  # libsndfile raises several types; all are reported below
        errors.append(f"soundfile: {err}")
    try:
        if path is not None:
            decoded, rate, declared = _decode_audioread(path)
        else:
            suffix = Path(str(name)).suffix or ".bin"
            with tempfile.TemporaryDirectory() as tmp:
                tmp_path = os.path.join(tmp, f"upload{suffix}")
                with open(tmp_path, "wb") as f:
                    f.write(data)
                decoded, rate, declared = _decode_audioread(tmp_path)
    except Exception as err:
        if type(err).__name__ == "NoBackendError":  # every backend (ffmpeg) failed to decode it
            errors.append("ffmpeg cannot decode it either")
        else:
            errors.append(f"audioread: {type(err).__name__}: {err}".rstrip(": "))
    else:
        _check_complete(name, decoded, rate, declared, errors)
        return decoded, rate
    detail = "; ".join(e.replace("\n", " ").rstrip(". ") for e in errors)
    raise InputError(name, f"unreadable, corrupt or unsupported audio format ({detail[:300]})")


def _to_mono_checked(name, decoded: np.ndarray, native_rate, sample_rate: int, allow_silence: bool) -> np.ndarray:
    native_rate = _check_rate(name, native_rate, "file")
    if decoded.ndim != 2 or decoded.shape[1] == 0 or (decoded.shape[0] == 0 and not allow_silence):
        raise InputError(name, "audio is empty (zero samples)")
    if not np.all(np.isfinite(decoded)):
        bad = int(np.count_nonzero(~np.isfinite(decoded)))
        raise InputError(name, f"audio contains {bad} non-finite (NaN/Inf) samples")
    if not allow_silence and not np.any(decoded):
        raise InputError(name, "every sample is exactly zero (a silent file or a decoding failure), refused here")
    mono = decoded.mean(axis=1, dtype=np.float32) if decoded.shape[1] > 1 else decoded[:, 0]
    return resample(np.ascontiguousarray(mono, dtype=np.float32), native_rate, sample_rate)


def load_audio(path: str | os.PathLike, *, sample_rate: int = DEFAULT_SAMPLE_RATE,
               allow_silence: bool = False) -> np.ndarray:
    """Any wav/flac/ogg/mp3 (or ffmpeg-readable) file -> mono float32 samples at `sample_rate` (16 kHz for MT3).

    Channels are averaged, then resampled with soxr 'HQ' (librosa.load's order and filter, as MT3). Raises
    `InputError(path, problem)` when the file is missing, unreadable, empty, truncated (decoded shorter than its
    header says), has NaN/Inf samples or an absurd sample rate, and -- unless `allow_silence=True` -- when every
    sample is exactly zero or there are none. The default refuses silence because training data preparation wants a
    decoding failure caught; transcription (`mt3 transcribe`/`serve`, the Python API) passes allow_silence=True:
    silence or a very short file is a valid input that has zero notes.
    """
    sample_rate = _check_rate(path, sample_rate, "requested")
    p = Path(path)
    if not p.exists():
        raise InputError(path, "file not found")
    if p.is_dir():
        raise InputError(path, "is a directory, not an audio file")
    try:
        size = p.stat().st_size
    except OSError as err:
        raise InputError(path, f"cannot read file ({err.strerror or err})") from err
    if size == 0:
        raise InputError(path, "file is empty (0 bytes)")
    if not os.access(p, os.R_OK):
        raise InputError(path, "permission denied")
    decoded, native_rate = _decode(path, os.fspath(p), None)
    return _to_mono_checked(path, decoded, native_rate, sample_rate, allow_silence)


def load_audio_bytes(data: bytes, *, name: str = "upload", sample_rate: int = DEFAULT_SAMPLE_RATE,
                     allow_silence: bool = True) -> np.ndarray:
    """`load_audio` for an in-memory file (an HTTP upload): same decoding and checks; errors name `name`.

    Silence is accepted by default here: uploads are transcribed, and a silent upload has zero notes.

    The file extension of `name` helps the ffmpeg fallback guess the container.
    """
    sample_rate = _check_rate(name, sample_rate, "requested")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"load_audio_bytes expects bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise InputError(name, "file is empty (0 bytes)")
    decoded, native_rate = _decode(name, None, bytes(data))
    return _to_mono_checked(name, decoded, native_rate, sample_rate, allow_silence)


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = DEFAULT_SAMPLE_RATE, *,
              subtype: str = "PCM_16") -> None:
    """Writes samples ([n] mono or [n, channels]) as a WAV file, atomically (temporary name, then rename).

    PCM_16 plays everywhere; pass subtype='FLOAT' to keep float32 samples bit-exact (values beyond +-1 survive).
    """
    import soundfile

    from mt3.data.records import atomic_write

    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim not in (1, 2):
        raise ValueError(f"write_wav expects [n] or [n, channels] samples, got shape {samples.shape}")
    if not np.all(np.isfinite(samples)):
        raise ValueError("write_wav: samples contain NaN/Inf")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or not (
            MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE):
        raise ValueError(f"write_wav: bad sample rate {sample_rate!r}")
    with atomic_write(path, "wb") as f:
        soundfile.write(f, samples, sample_rate, format="WAV", subtype=subtype)


SILENCE_PEAK_DB = -80.0  # quieter files are left as given: normalising them would only amplify noise


def normalize_peak(samples: np.ndarray, peak_db: float | str | None) -> np.ndarray:
    """`samples` scaled so their peak is `peak_db` dBFS (a number); as given for None/'model' (unresolved) or for
    files whose peak is below SILENCE_PEAK_DB. Inference uses it to present a file at the level a model trained at
    (`inference.InferenceConfig.input_peak_db`)."""
    if not isinstance(peak_db, (int, float)):
        return samples
    peak = float(np.max(np.abs(samples), initial=0.0))
    if peak <= 10.0 ** (SILENCE_PEAK_DB / 20.0):
        return samples
    return (samples * np.float32(10.0 ** (peak_db / 20.0) / peak)).astype(np.float32)
