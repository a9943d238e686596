"""MT3's audio frontend: 128-sample frames (numpy) and the log-mel spectrogram (JAX).

MT3 computes its log-mel with `tf.signal`; this module reproduces those numbers in JAX so the model can compute its
own inputs inside `jit` on any accelerator, with no TensorFlow on the host (training, eval, inference and serving then
share one frontend). The recipe, per REFERENCE §1:

- frames of `fft_size` samples every `hop_width` samples, no centring, zeros appended at the end only
  (`pad_end=True`: `num_frames = ceil(N / hop_width)`; frame k covers samples [k·hop, k·hop + fft_size));
- periodic Hann window, `rfft(fft_size)`, magnitude `abs` (not power);
- TF's `linear_to_mel_weight_matrix` (HTK mel, triangles in mel space over the linear bin centres, unnormalised,
  DC row zeroed), built once in numpy with TF's float32 arithmetic, bit-exact with TF for MT3's config (see the
  constants section); librosa's mel matrix is built differently (up to 6e-4 apart) and is *not* used;
- values <= 0 replaced by 1e-5 (MT3's floor, no additive offset), natural log.

`import mt3.spectrograms` stays cheap: JAX is imported inside the functions that need it.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import math
import zlib

import numpy as np

DEFAULT_SAMPLE_RATE = 16000
DEFAULT_HOP_WIDTH = 128
DEFAULT_NUM_MEL_BINS = 512
FFT_SIZE = 2048
MEL_LO_HZ = 20.0
MEL_HI_HZ = 7600.0
LOG_FLOOR = 1e-5  # MT3's `safe_log` eps: replaces values <= 0 (it is not added)


@dataclasses.dataclass(frozen=True)
class SpectrogramConfig:
    """Spectrogram parameters; the defaults are MT3's (16 kHz, 125 frames/s, 512 mel bins over 20-7600 Hz)."""

    sample_rate: int = DEFAULT_SAMPLE_RATE
    hop_width: int = DEFAULT_HOP_WIDTH
    num_mel_bins: int = DEFAULT_NUM_MEL_BINS
    fft_size: int = FFT_SIZE
    mel_lo_hz: float = MEL_LO_HZ
    mel_hi_hz: float = MEL_HI_HZ

    def __post_init__(self):
        for name in ("sample_rate", "hop_width", "num_mel_bins", "fft_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
                raise ValueError(f"SpectrogramConfig.{name} must be a positive integer, got {value!r}")
        if self.fft_size < self.hop_width:
            raise ValueError(f"SpectrogramConfig.fft_size ({self.fft_size}) must be >= hop_width ({self.hop_width})")
        if not 0.0 <= self.mel_lo_hz < self.mel_hi_hz <= self.sample_rate / 2:
            raise ValueError(
                "SpectrogramConfig needs 0 <= mel_lo_hz < mel_hi_hz <= sample_rate / 2, got "
                f"mel_lo_hz={self.mel_lo_hz}, mel_hi_hz={self.mel_hi_hz}, sample_rate={self.sample_rate}")

    @property
    def frames_per_second(self) -> float:
        """Frame rate of `split_audio` and of the spectrogram (125.0 for MT3)."""
        return self.sample_rate / self.hop_width

    @property
    def num_fft_bins(self) -> int:
        return self.fft_size // 2 + 1

    @property
    def abbrev(self) -> str:
        """Suffix for task names: '' for MT3's defaults (as MT3), otherwise the fields that differ, e.g. 'hw256'."""
        parts = []
        if self.sample_rate != DEFAULT_SAMPLE_RATE:
            parts.append(f"sr{self.sample_rate}")
        if self.hop_width != DEFAULT_HOP_WIDTH:
            parts.append(f"hw{self.hop_width}")
        if self.num_mel_bins != DEFAULT_NUM_MEL_BINS:
            parts.append(f"mb{self.num_mel_bins}")
        if self.fft_size != FFT_SIZE:
            parts.append(f"fft{self.fft_size}")
        if self.mel_lo_hz != MEL_LO_HZ:
            parts.append(f"lo{self.mel_lo_hz:g}")
        if self.mel_hi_hz != MEL_HI_HZ:
            parts.append(f"hi{self.mel_hi_hz:g}")
        return "".join(parts)

    # MT3's own name for the same property.
    abbrev_str = abbrev


# --------------------------------------------------------------------------------------------------------------------
# numpy framing (tokenization side)


def split_audio(samples: np.ndarray, config: SpectrogramConfig = SpectrogramConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Mono samples -> (frames [n, hop] float32, frame_times [n] float64), MT3's `_audio_to_frames` rule.

    The end is padded by `hop - len % hop` zeros, i.e. a whole extra hop when the length is already a multiple: MT3
    does this, and the frame count decides which token belongs to which frame, so we keep it bit for bit.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"split_audio expects mono 1-D samples, got shape {samples.shape}")
    hop = config.hop_width
    padded = np.pad(samples, (0, hop - len(samples) % hop))
    frames = padded.reshape(-1, hop)
    frame_times = np.arange(len(frames), dtype=np.float64) / config.frames_per_second
    return frames, frame_times


def flatten_frames(frames):
    """[..., L, hop] -> [..., L*hop]: frames back to samples (numpy or JAX arrays)."""
    return frames.reshape(*frames.shape[:-2], frames.shape[-2] * frames.shape[-1])


# --------------------------------------------------------------------------------------------------------------------
# constants: Hann window and mel matrix, as TF computes them
#
# TF builds both in float32. Its matrix differs from the exact (float64) formula by up to 7e-5, and because the
# lowest mel channels hold a single FFT bin each, such a weight error is a log-mel error of its own (up to 1.6e-3);
# likewise window values 1 ulp apart change quiet bins of loud frames by ~1e-3 after the FFT. So we repeat TF's
# float32 arithmetic step by step (its linspace, then mel/slopes/min/max in float32) with correctly rounded
# transcendental functions, and then overwrite the few hundred entries where TF's own log/cos rounded differently
# by the values TF produces (`_TF_ROUNDINGS`, regenerated by `python tests/test_spectrograms.py` and checked
# bit-exactly against tf.signal in the tests). With both, compute_spectrogram matches tf.signal to ~1e-6 on CPU.
# For non-MT3 configs only the formula applies (agreement ~1e-3 in the worst bins).

_F32 = np.float32

# zlib + base85 of little-endian int32: [n_window, n_matrix, window index deltas, matrix flat-index deltas,
# window float32 bits, matrix float32 bits] for window length 2048 and the (512, 1025, 16000, 20, 7600) matrix.
_TF_ROUNDINGS_KEY = (FFT_SIZE, (DEFAULT_NUM_MEL_BINS, FFT_SIZE // 2 + 1, DEFAULT_SAMPLE_RATE, MEL_LO_HZ, MEL_HI_HZ))
_TF_ROUNDINGS = (
    "c-oCrX;4&G7N!@PW|37;8wEvWk;P_lq_OY$5Ky8biyB#6!d8f~2%{n+qXH@};D$kQjHodP8XYBI;t~NP7HEh{aA80rN_5mo#wEtFG#TbeZdX0J"
    "lB)Uf)qUsQ@0|0UrCytXfkBG^GXYToqynr3*a}bxkO&wnz({~ffKtE!es3h=yn~#-Nkw;t0%ZKoO!RHSzm=RP<+hQYzb=M^zw3OY92Pv5F+ZhT"
    "lU$_HMZg>Z&LX`EQB1ig|3H3P^LHhWE#tN6a+vZMO8%zczDA<BI^EX1cBQB`3;u1yc>$cK<*`VBFV}7^z=6k*iuz#5PhFpkc`Ztj24il^IdptG"
    "k#@OgE-L=5;(3*#e(LAf)#$`|g9MBdU?V`odu1r%if1Ab^+GPvDdT<$e(L&U&hKQR(@>;Ge`h3mducA}yG+z4nMjjdFRqbjhPGUzcvls?kHh)w"
    "q)NW83eJ=AoR(Y*w~bA>E=7O7fwVtQ|NNtOsr>)r8T^4Q<Nk)q-{%>b^?#T1Q^s|VkLNnLEz|LMoyK<k<LcYJ5<NZoI&^(9=XwV6I4W)r{(ZjA"
    "Ru1L&yiOxkf7>RA$8+ZI4!@latGFIMKN-(!po`D_<@{d4>y=sS)x~*I>;ASx*`KEv)&E{U&wxnIbM1d`k=#GNWfs@L>l~2E{Q`J>TF&Qvu_)qv"
    "U4C9~uOZK)(__{@ug*3})~lD#Nn)+%zrRKkUtXyVtUs#lKK_$d{mB?MToJ(3hqNrKx{^KWsA11m-e--gUa(&p6cl;Qh_27EprNm9>3i!zv`Iaf"
    "T8<AT>8I|LZ|Fs@eaBK@lA2D<`4i23qam|YE!_^7Mui3u^m2U^rN+#sFiNE4^Xb$&Fq3wk%c3I<OUYloid>fF(?O>K%4jQ~b@_#~^4U82;6M>w"
    "IJtouS~t<rv~A>gb2}ZJxPz7{E2#MWO3HroDHSZPrCm?!XvEUfRJ!6zD%YMP_pM)1?cr`xzp%lowNCh^c@)fCN26ka3;dg1ko~|FH3?%d&e0vU"
    "0Umf$=!?Rget7yK07Jqiz|WEpJ7OXxjS9k|Ws_l7HwD9DrXsv;I@*p#V8GBBD3Z>E>E&7YOJN*pGv{JN-CWqNnTM6P=A%dT0fJ5>VfBs_>`6~W"
    "LU$^9hAc!|Y&xQw($S;N#7xh{V25(S+E-v)%xY9_U5!b>t6^H2hikPth~BugkMoZI&d=sl8hUNgU|P5Ug;!JhVzcNJJn&4$5$_~4c_zUBhj@58"
    "$D^Wo9<27x>C={!9E<J6F}M>HgBw?(U_3tp+p@wj#d|us5e8YsG&GD3#$=(^ULOrE1^A&X#v4DnjfGFGC#pl-;8f(=*E_uD+}FpalSV={$qsq$"
    "Hc<GQU~StIYX7y1O0!Q;qWmyz6lRm<bdchn@24fgtgeOcrNKevl)7mbU9#Uvx0B20%i>aM_bKU{@t&<~>7x~S^g4A3#f?d!Gp#e|+u%s*>>z60"
    "I-Z{V>`T{gc~HwtHwxS^l0MUppwHWe(V;E&l$xm`MZ^#)6n62pu#=X;Zn}03q_8EHr1-0Z)Y%5~NZ4W5y|>xxd)L{iOBY$p#75?yQO`Pr{m!~^"
    "q;J=Az4x;B?(AmWxm#F#SrL0=w2s9$g|Ym0Kh_=S!vftr+5W20%+hfX%RhTX8)z1)ZJgOX!P^<As4busbrQN)D$LzyIUaPGv8J5wsG`Xdy<Lw<"
    "Vr`0p`(`7jU^G>Q71OcU09X~q;@p3RP{@QbwkswBvI+ZWb)p&{&bCCyjJx!G{VXh&ds6<qhb+=B3E9`LQFGZK+$tH5sE6A~Gp&)5I~}3Q*Pykx"
    "gkHMWu)@xTm}&n5MZYjcj&m&BQtT<}Z!0N%cObrNa7A$b-)W8JFuT^V2*+OJKz+lKZ4RD?ub-RHrlV)+teX?chbMsEzG4(JmY%uI!jdct*gM{%"
    "mR%Q^(dGq+xLwC`k{3c%YLC{g7W#3NEnGgoL3<7j!{yJK=$|Kokf>coUae2)@op33KQo1a<0CqAHUxvMGH6O?3Ql`oV$n7Z>}!V{7;DGVf7LTk"
    "nLQb4niR^pl8Nw=jVw*lNmF~Rv7|x``wJCRuL**3$Z`tJjmJgy3tR4>qQu--wD)$CUA_g<M}9(6|Lutbxell|zd*0{Su@Ga9K5aah3ScM>ha2;"
    "(7F(ue192E3jevy;j3`wbjO5}X&+HQr#BK~v#IKEFuFF^lg;Vja1ISZYEKSrepy9l3_Z}(yit3;CJ$*1b~HLN4jcUAaCg`s>b;_cG_i<^ujZlL"
    "yhyufur)lccF~St;2*gK6g#z&ot&M9n`I?rds2gp$L?_Ptft+2ipkF>0Mn-?P{y%P{4#DVlph|TPMBa?{=dlOdMJ{Q$5W+~6-9qB2M-zpsrhOI"
    "dXprO`u|GV8-HToZb`uX`@3nYxi5}5TH$Ep9Xek(4{tn-DgFyD1aAMBcA0ol+{#&4-s27{O*MV2ETZFYwFv&RJ66~qrs@`V)MQrE6-gROpI0%z"
    "#P#$rT#LJ3U8ZdnDy;GPhN<IH;IQ5u7oS&?Ms|^sRt>|As9dC7{8^h98G?cJnbe+BOFKiHv227X?9M%=MXdyn1%>oKeF(2e"
)


def _f32_log(x) -> np.ndarray:
    return np.log(np.asarray(x, dtype=np.float64)).astype(_F32)


def _f32_linspace(start, stop, num: int) -> np.ndarray:
    """tf.linspace in float32: start + i * ((stop - start) / (num - 1)), with the last value exactly `stop`."""
    start, stop = _F32(start), _F32(stop)
    delta = (stop - start) / _F32(max(num - 1, 1))
    middle = start + np.arange(1, num - 1, dtype=_F32) * delta
    return np.concatenate([[start], middle, [stop]]).astype(_F32)[:num]


def _hertz_to_mel_f32(frequencies_hz) -> np.ndarray:
    """HTK mel scale as TF evaluates it in float32: 1127 * ln(1 + f / 700)."""
    f = np.asarray(frequencies_hz, dtype=_F32)
    return (_F32(1127.0) * _f32_log(_F32(1.0) + f / _F32(700.0))).astype(_F32)


def _hann_window_formula(length: int) -> np.ndarray:
    """Periodic Hann window in TF's float32 arithmetic: 0.5 - 0.5 * cos((2*pi * n) / length)."""
    arg = (_F32(2.0 * np.pi) * np.arange(length, dtype=_F32)) / _F32(length)
    return (_F32(0.5) - _F32(0.5) * np.cos(arg.astype(np.float64)).astype(_F32)).astype(_F32)


def _mel_matrix_formula(num_mel_bins: int, num_fft_bins: int, sample_rate: int, lo_hz: float, hi_hz: float):
    """TF's linear_to_mel_weight_matrix in float32: triangles in mel space over the linear bin centres, DC row 0."""
    linear_hz = _f32_linspace(0.0, _F32(sample_rate) / _F32(2.0), num_fft_bins)[1:]
    bins_mel = _hertz_to_mel_f32(linear_hz)[:, None]
    edges = _f32_linspace(_hertz_to_mel_f32(lo_hz), _hertz_to_mel_f32(hi_hz), num_mel_bins + 2)
    lower, center, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    rising = (bins_mel - lower) / (center - lower)
    falling = (upper - bins_mel) / (upper - center)
    weights = np.maximum(_F32(0.0), np.minimum(rising, falling))
    return np.concatenate([np.zeros((1, num_mel_bins), _F32), weights], axis=0).astype(_F32)


def encode_tf_roundings(window_tf: np.ndarray, matrix_tf: np.ndarray) -> str:
    """The `_TF_ROUNDINGS` string for TF's 2048 window and default mel matrix (used to regenerate it)."""
    window = _hann_window_formula(len(window_tf))
    matrix = _mel_matrix_formula(*_TF_ROUNDINGS_KEY[1]).ravel()
    iw = np.flatnonzero(window != window_tf)
    im = np.flatnonzero(matrix != matrix_tf.ravel())
    parts = [[len(iw), len(im)], np.diff(iw, prepend=0), np.diff(im, prepend=0),
             window_tf[iw].astype(_F32).view(np.int32), matrix_tf.ravel()[im].astype(_F32).view(np.int32)]
    raw = np.concatenate(parts).astype("<i4").tobytes()
    return base64.b85encode(zlib.compress(raw, 9)).decode("ascii")


@functools.cache
def _tf_roundings() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    data = np.frombuffer(zlib.decompress(base64.b85decode(_TF_ROUNDINGS)), dtype="<i4")
    n_window, n_matrix = int(data[0]), int(data[1])
    pos = 2
    window_index = np.cumsum(data[pos:pos + n_window])
    pos += n_window
    matrix_index = np.cumsum(data[pos:pos + n_matrix])
    pos += n_matrix
    window_values = data[pos:pos + n_window].view("<f4")
    pos += n_window
    matrix_values = data[pos:pos + n_matrix].view("<f4")
    return (window_index, window_values), (matrix_index, matrix_values)


@functools.lru_cache(maxsize=8)
def hann_window(length: int = FFT_SIZE) -> np.ndarray:
    """Periodic Hann window as tf.signal.hann_window(length) (bit-exact for 2048), float32, read-only."""
    window = _hann_window_formula(length)
    if length == _TF_ROUNDINGS_KEY[0]:
        index, values = _tf_roundings()[0]
        window[index] = values
    window.setflags(write=False)
    return window


@functools.lru_cache(maxsize=8)
def _mel_matrix_cached(num_mel_bins: int, num_fft_bins: int, sample_rate: int, lo_hz: float, hi_hz: float):
    matrix = _mel_matrix_formula(num_mel_bins, num_fft_bins, sample_rate, lo_hz, hi_hz)
    if (num_mel_bins, num_fft_bins, sample_rate, lo_hz, hi_hz) == _TF_ROUNDINGS_KEY[1]:
        index, values = _tf_roundings()[1]
        matrix.ravel()[index] = values
    matrix.setflags(write=False)
    return matrix


def mel_weight_matrix(config: SpectrogramConfig = SpectrogramConfig()) -> np.ndarray:
    """[fft_size/2 + 1, num_mel_bins] float32: tf.signal.linear_to_mel_weight_matrix (bit-exact for MT3's config).

    Read-only and cached per config, so it is built once and embedded as a constant in jitted code.
    """
    return _mel_matrix_cached(config.num_mel_bins, config.num_fft_bins, config.sample_rate,
                              float(config.mel_lo_hz), float(config.mel_hi_hz))


@functools.lru_cache(maxsize=8)
def _active_fft_bins(config: SpectrogramConfig) -> int:
    """Number of leading FFT bins with any mel weight: the rest (above mel_hi_hz) are skipped in the matmul."""
    nonzero_rows = np.flatnonzero(mel_weight_matrix(config).any(axis=1))
    return int(nonzero_rows[-1]) + 1 if len(nonzero_rows) else 1


# --------------------------------------------------------------------------------------------------------------------
# JAX log-mel


def _frame_signal(samples, frame_length: int, hop: int):
    """[..., N] -> [..., ceil(N/hop), frame_length] with zeros past the end (tf.signal.frame(pad_end=True)).

    Implemented with a reshape into hop-sized blocks and `frame_length / hop` static shifted slices rather than an
    index gather (benchmarks/frontend.py --compare-framing: the two are within noise on CPU; slices are plain copies,
    which every backend lowers well). Other frame/hop ratios use the gather.
    """
    import jax.numpy as jnp

    n = samples.shape[-1]
    num_frames = -(-n // hop)
    if frame_length % hop == 0:
        blocks_per_frame = frame_length // hop
        total_blocks = num_frames + blocks_per_frame - 1
        pad = total_blocks * hop - n
        padded = jnp.pad(samples, [(0, 0)] * (samples.ndim - 1) + [(0, pad)])
        blocks = padded.reshape(*samples.shape[:-1], total_blocks, hop)
        return jnp.concatenate([blocks[..., j:j + num_frames, :] for j in range(blocks_per_frame)], axis=-1)
    pad = (num_frames - 1) * hop + frame_length - n
    padded = jnp.pad(samples, [(0, 0)] * (samples.ndim - 1) + [(0, pad)])
    index = np.arange(num_frames)[:, None] * hop + np.arange(frame_length)[None, :]
    return padded[..., index]


def compute_spectrogram(samples, config: SpectrogramConfig = SpectrogramConfig()):
    """Samples [..., N] -> log-mel [..., ceil(N / hop), num_mel_bins] float32 (jnp), numerically MT3's tf.signal recipe.

    Batched inputs are framed along the last axis, so the model calls this inside `jit` on [B, L*hop] (giving L frames
    per example). Works under `jit`/`vmap`; the mel matrix is a numpy constant and only the FFT bins it weights are
    multiplied (bins above mel_hi_hz are all-zero rows). The matmul runs at HIGHEST precision so accelerators do not
    silently use TF32/bf16 passes for it. Under `jax.jit`, pass a non-default config via functools.partial or
    `static_argnames="config"` (it is a hashable frozen dataclass).
    """
    import jax
    import jax.numpy as jnp

    samples = jnp.asarray(samples, dtype=jnp.float32)
    if samples.ndim == 0:
        raise ValueError("compute_spectrogram expects samples with a time axis, got a scalar")
    frames = _frame_signal(samples, config.fft_size, config.hop_width)
    frames = frames * jnp.asarray(hann_window(config.fft_size))
    active = _active_fft_bins(config)
    magnitude = jnp.abs(jnp.fft.rfft(frames, n=config.fft_size, axis=-1)[..., :active])
    mel = jnp.matmul(magnitude, jnp.asarray(mel_weight_matrix(config)[:active]), precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.where(mel <= 0.0, LOG_FLOOR, mel))


def spectrogram_from_frames(frames, config: SpectrogramConfig = SpectrogramConfig()):
    """Frames [..., L, hop] -> log-mel [..., L, num_mel_bins]: what the model's first stage computes per segment.

    Flattening first means the last ~15 frames of a segment see zeros rather than the next segment's audio, exactly
    as MT3 (the spectrogram is computed per segment in training and inference alike).
    """
    if frames.shape[-1] != config.hop_width:
        raise ValueError(f"frames must be [..., L, {config.hop_width}], got shape {tuple(frames.shape)}")
    return compute_spectrogram(flatten_frames(frames), config)


def num_frames(num_samples: int, config: SpectrogramConfig = SpectrogramConfig()) -> int:
    """Spectrogram frames for `num_samples` samples (ceil(N / hop)), without computing anything."""
    return math.ceil(num_samples / config.hop_width)
