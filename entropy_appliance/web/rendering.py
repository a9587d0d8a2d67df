"""
Pictures and sound made of random bytes: PNG images, a raw-source heatmap
and WAV noise.

Everything here is pure and synchronous (no Twisted): each function takes a
``data_source(n) -> bytes`` (in the appliance, a DRBG) or the raw samples
themselves, and returns the encoded file as a list of ``bytes`` pieces, in
the order its encoder wrote them: joining them would copy the whole file
once more, and a response can write them one after another instead, freeing
each once it is sent.  PNG encoding is Pillow's and WAV framing is the stdlib
:mod:`wave` module's; what is written here is only the shaping of the noise,
because no dependency of ours does that (numpy is not one).

The limits of every parameter live here too (:func:`check_image`,
:func:`check_sound`), so the routes and the OpenAPI document quote the same
numbers.  A value beyond a size limit raises :class:`MediaParamError` with
``too_large`` set, which the web layer turns into 413; any other bad value
is a plain 400.

Cost: :func:`image_cost`, :func:`heatmap_cost` and :func:`sound_cost` are
the memory, in bytes, that a file needs at its peak while it is made (the
web layer budgets the work by it).  Measured with ``ru_maxrss`` (Pillow 13,
CPython 3.11, 4096x4096 images, 60 s at 48 kHz; peak over the process
before, and CPU seconds): RGB 119 MB, 1.2 s; gray 39 MB, 0.4 s; bits 21 MB,
0.16 s; heatmap 16 MB, 0.05 s; white noise 86 MB, 0.35 s; pink 91 MB, 0.5 s;
brown 39 MB, 0.8 s.  The CPU time tracks the memory within a factor of a
few, so one figure budgets both.

Speed: the white and pink noise of a 60 s, 48 kHz file are computed on one
big integer holding every sample in its own 32-bit lane, so each step of the
shaping (masking, holding, adding rows, scaling) is a single C-level integer
operation over all samples at once.  Brown noise needs a recursive filter,
which is run over blocks with ``itertools.accumulate`` so that no Python
code runs per sample.
"""

from __future__ import annotations

import math
import operator
import sys
import wave
from array import array
from collections.abc import Callable
from itertools import accumulate, islice, repeat
from typing import IO, cast

from PIL import Image

__all__ = [
    "COLORS",
    "DEFAULT_SIZE",
    "HEATMAP_MAX_SAMPLES",
    "MAX_COST",
    "MAX_SECONDS",
    "MAX_SIZE",
    "MODES",
    "RATES",
    "MediaParamError",
    "check_image",
    "check_sound",
    "heatmap_cost",
    "heatmap_grid",
    "heatmap_png",
    "image_bytes_needed",
    "image_cost",
    "noise_bytes_needed",
    "noise_wav",
    "popcount_palette",
    "random_png",
    "sound_cost",
]

DataSource = Callable[[int], bytes]

MAX_SIZE = 4096
"""Largest width or height of an image, in pixels."""
DEFAULT_SIZE = 256
"""Width and height of an image when none is asked for."""
MODES = ("rgb", "gray", "bits")
"""Image modes: 24-bit colour, 8-bit grey, and one random bit per pixel."""
MAX_SECONDS = 60.0
"""Longest sound, in seconds."""
DEFAULT_SECONDS = 5.0
"""Length of a sound when none is asked for."""
RATES = (8000, 22050, 44100, 48000)
"""Sample rates offered, in Hz."""
DEFAULT_RATE = 44100
"""Sample rate when none is asked for."""
COLORS = ("white", "pink", "brown")
"""Noise colours: flat, -3 dB per octave, -6 dB per octave."""
HEATMAP_MAX_SAMPLES = 1024
"""Raw samples in one heatmap: small next to the pool, so a heatmap never starves a reseed."""

#: Bytes held at the peak per pixel of an image of each mode: Pillow keeps an
#: RGB pixel in 4 bytes, plus the 3 of the raw input or of the PNG output
#: (whichever is alive beside it); a grey pixel in 1, plus 1; a bit-mode
#: pixel in 1, plus an eighth.
_IMAGE_BYTES_PER_PIXEL = {"rgb": 7.0, "gray": 2.0, "bits": 1.25}
#: Bytes held at the peak per sample of each colour of noise: the lane
#: integers of white and pink noise have several 4-byte copies alive at once,
#: brown noise one 8-byte float per sample.
_SOUND_BYTES_PER_SAMPLE = {"white": 30.0, "pink": 32.0, "brown": 14.0}
#: What every file costs beyond its pixels or samples (Pillow's and zlib's
#: buffers, the encoder's state).
_BASE_COST = 1 << 20

PEAK = 29204
"""Peak sample value of every sound (-1 dBFS): loud, and never clipped."""

_PINK_ROWS = 16
"""Voss rows: the slowest changes every 2**15 samples, pink down to about 1 Hz at 48 kHz."""
_ROW_BITS = 12
"""Bits per random value in a pink row; 16 rows of 12 bits sum within 17 bits."""
_BROWN_CORNER_HZ = 20.0
"""Below this the leaky integrator is flat, so the noise does not drift away."""


class MediaParamError(ValueError):
    """
    A media parameter is out of its limits.

    ``param`` names the query parameter; ``too_large`` is true when the value
    only exceeds a size limit (HTTP 413) rather than being invalid (400).
    """

    def __init__(self, param: str, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.param = param
        self.message = message
        self.too_large = too_large


# -- limits -------------------------------------------------------------------


def check_image(width: int, height: int, mode: str = "rgb") -> None:
    """Raise :class:`MediaParamError` unless the image parameters are within limits."""
    for name, value in (("width", width), ("height", height)):
        if value < 1:
            raise MediaParamError(name, f"{name} must be at least 1 pixel, not {value}")
        if value > MAX_SIZE:
            raise MediaParamError(
                name, f"{name} {value} is above the limit of {MAX_SIZE} pixels", too_large=True)
    if mode not in MODES:
        raise MediaParamError("mode", f"mode must be one of {', '.join(MODES)}, not {mode!r}")


def check_sound(seconds: float, rate: int, color: str = "white") -> None:
    """Raise :class:`MediaParamError` unless the sound parameters are within limits."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise MediaParamError("seconds", f"seconds must be a number above 0, not {seconds}")
    if seconds > MAX_SECONDS:
        raise MediaParamError(
            "seconds", f"seconds {seconds:g} is above the limit of {MAX_SECONDS:g}", too_large=True)
    if rate not in RATES:
        raise MediaParamError(
            "rate", f"rate must be one of {', '.join(map(str, RATES))} Hz, not {rate}")
    if color not in COLORS:
        raise MediaParamError("color", f"color must be one of {', '.join(COLORS)}, not {color!r}")


# -- images -------------------------------------------------------------------


def image_cost(width: int, height: int, mode: str = "rgb") -> int:
    """The memory, in bytes, that :func:`random_png` needs at its peak for this image."""
    check_image(width, height, mode)
    return _BASE_COST + int(width * height * _IMAGE_BYTES_PER_PIXEL[mode])


def heatmap_cost(width: int, height: int) -> int:
    """The memory, in bytes, that :func:`heatmap_png` needs at its peak (one byte a pixel)."""
    check_image(width, height)
    return _BASE_COST + width * height


def image_bytes_needed(width: int, height: int, mode: str) -> int:
    """How many random bytes :func:`random_png` draws for this image."""
    check_image(width, height, mode)
    if mode == "bits":
        return (width + 7) // 8 * height
    return width * height * (3 if mode == "rgb" else 1)


class _Pieces:
    """A write-only file that keeps each write as it is: no growing buffer, no copy."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.pieces.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def _png(image: Image.Image, compress_level: int) -> list[bytes]:
    out = _Pieces()
    image.save(cast(IO[bytes], out), "PNG", compress_level=compress_level)
    return out.pieces


def random_png(data_source: DataSource, width: int = DEFAULT_SIZE, height: int = DEFAULT_SIZE,
               mode: str = "rgb") -> list[bytes]:
    """
    A PNG whose pixels are random bytes from ``data_source``, in pieces.

    ``rgb`` gives an 8-bit RGB image, ``gray`` an 8-bit greyscale one, and
    ``bits`` a 1-bit image in which each random bit is a black or a white
    pixel.
    """
    n = image_bytes_needed(width, height, mode)
    data = data_source(n)
    if len(data) != n:
        raise ValueError(f"data source gave {len(data)} bytes, not {n}")
    pil_mode = {"rgb": "RGB", "gray": "L", "bits": "1"}[mode]
    # Mode "1" takes rows packed eight pixels to a byte, which is exactly the random bits.
    image = Image.frombytes(pil_mode, (width, height), data)
    # Pillow holds its own copy now: the input goes before the output grows.
    del data
    # Random pixels do not compress: level 0 stores them (the same size as
    # level 1 makes, in two thirds of the time; Pillow's filter choice is
    # most of what is left, and it has no switch to skip it).
    return _png(image, 0)


_POPCOUNT = bytes(bin(i).count("1") for i in range(256))

# A dark-to-bright scale with the expected count of a fair source (4 of 8
# bits) in its middle, so that a bias to either side changes the hue.
_HEAT_COLORS = (
    (13, 8, 135), (84, 2, 163), (139, 10, 165), (185, 50, 137), (219, 92, 104),
    (244, 136, 73), (254, 188, 43), (240, 249, 33), (255, 255, 255),
)


def popcount_palette() -> list[tuple[int, int, int]]:
    """The heatmap's colour for each bit count 0..8 of a sample."""
    return list(_HEAT_COLORS)


def heatmap_grid(width: int, height: int, max_samples: int = HEATMAP_MAX_SAMPLES) -> tuple[int, int]:
    """
    The cells (columns, rows) of a heatmap of this size: at most
    ``max_samples`` of them, about square, and each at least one pixel.
    """
    check_image(width, height)
    cols = max(1, min(width, max_samples, round(math.sqrt(max_samples * width / height))))
    rows = max(1, min(height, max_samples // cols))
    return cols, rows


def heatmap_png(raw: bytes, width: int = DEFAULT_SIZE, height: int = DEFAULT_SIZE) -> list[bytes]:
    """
    A PNG heatmap of the bit population count of raw source samples, in pieces.

    The first ``cols * rows`` samples (see :func:`heatmap_grid`) fill a grid
    row by row; each cell is coloured by how many of its sample's 8 bits are
    set, from dark (0) through orange (4, what a fair source gives on
    average) to white (8).  A healthy source looks like even confetti; a
    stuck one is a single flat colour and a biased one leans dark or bright.
    """
    cols, rows = heatmap_grid(width, height)
    cells = cols * rows
    if len(raw) < cells:
        raise ValueError(f"a {width}x{height} heatmap needs {cells} raw samples, got {len(raw)}")
    counts = bytes(raw[:cells]).translate(_POPCOUNT)
    grid = Image.frombytes("P", (cols, rows), counts)
    grid.putpalette([c for rgb in _HEAT_COLORS for c in rgb])
    # Flat cells compress well, and the fastest level does it.
    return _png(grid.resize((width, height), Image.Resampling.NEAREST), 1)


# -- sound --------------------------------------------------------------------
#
# A "lane integer" holds n samples as one int, sample i in bits 32*i..32*i+31,
# each lane non-negative and below 2**32, so +, * by a small int, >> and &
# act on every lane at once as long as no lane overflows.


# The lanes need an unsigned array type of exactly 4 bytes.
_LANE = next(t for t in "IL" if array(t).itemsize == 4)


def _lanes_pattern(value: int, n: int) -> int:
    """A lane integer with ``value`` in each of ``n`` lanes."""
    return int.from_bytes(value.to_bytes(4, "little") * n, "little")


def _to_lane_array(lanes: int, n: int) -> array:
    arr = array(_LANE)
    arr.frombytes(lanes.to_bytes(4 * n, "little"))
    if sys.byteorder == "big":
        arr.byteswap()
    return arr


def _from_lane_array(arr: array) -> int:
    if sys.byteorder == "big":
        arr = array(arr.typecode, arr)
        arr.byteswap()
    return int.from_bytes(arr.tobytes(), "little")


def _random_lanes(data: bytes, n: int, bits: int) -> int:
    """
    ``n`` lanes of independent uniform values below ``2**bits`` (at most
    16), from the ``2 * n`` bytes ``data``.
    """
    wide = bytearray(4 * n)
    wide[0::4] = data[0::2]
    wide[1::4] = data[1::2]
    return int.from_bytes(wide, "little") & _lanes_pattern((1 << bits) - 1, n)


def _hold_twice(lanes: int, m: int, n: int) -> int:
    """Each of ``m`` lanes repeated twice, keeping the first ``n`` lanes."""
    src = _to_lane_array(lanes, m)
    out = array(_LANE, bytes(4 * 2 * m))
    out[0::2] = src
    out[1::2] = src
    del out[n:]
    return _from_lane_array(out)


def _pink_row_lengths(n: int) -> list[int]:
    """Values in each Voss row, slowest row first."""
    return [-(-n // (1 << k)) for k in range(_PINK_ROWS - 1, -1, -1)]


def _pink_lanes(data: bytes, n: int) -> int:
    """
    Voss pink noise: the sum of rows of random values, row k holding each
    value for 2**k samples, so each octave down gets one more row's power.

    The rows are summed from the slowest up, each partial sum held twice and
    added to the next faster row, so the work is about 2n lane operations
    whatever the number of rows.
    """
    total = 0
    m_prev = 0
    at = 0
    for m in _pink_row_lengths(n):
        row = _random_lanes(data[at:at + 2 * m], m, _ROW_BITS)
        at += 2 * m
        total = row if not m_prev else row + _hold_twice(total, m_prev, m)
        m_prev = m
    return total


def _int16_from_lanes(lanes: int, n: int) -> bytes:
    """
    Centre the ``n`` lane values on their mean, scale them so the larger
    excursion is exactly :data:`PEAK`, and return little-endian 16-bit
    samples.
    """
    values = _to_lane_array(lanes, n)
    lo, hi = min(values), max(values)
    mean = sum(values) / n
    peak = max(hi - mean, mean - lo)
    if peak < 1:
        return bytes(2 * n)
    # Scale by c / 2**s in lane arithmetic, with 32768 added so every lane
    # stays non-negative; a lane is then below 2**17 * 2**s, so s = 14 keeps
    # it within 32 bits.
    s = 14
    c = max(1, int(PEAK * (1 << s) / peak))
    offset = round(32768 * (1 << s) - (mean - lo) * c)
    scaled = (lanes - _lanes_pattern(lo, n)) * c + _lanes_pattern(offset, n)
    # Offset binary to two's complement is flipping the top bit of the 16.
    words = ((scaled >> s) & _lanes_pattern(0xFFFF, n)) ^ _lanes_pattern(0x8000, n)
    wide = words.to_bytes(4 * n, "little")
    out = bytearray(2 * n)
    out[0::2] = wide[0::4]
    out[1::2] = wide[1::4]
    return bytes(out)


def _int16_from_floats(values: array) -> bytes:
    n = len(values)
    mean = sum(values) / n
    peak = max(max(values) - mean, mean - min(values))
    scale = PEAK / peak if peak > 0 else 0.0
    # int() truncates toward zero, so no sample can pass the peak.
    samples = array("h", map(int, map(operator.mul, map(operator.sub, values, repeat(mean)),
                                      repeat(scale))))
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def _brown(data: bytes, n: int, rate: int) -> array:
    """
    Brown noise: white noise through a leaky integrator,
    ``y[i] = a * y[i-1] + x[i]``, flat below :data:`_BROWN_CORNER_HZ`.

    Within a block, ``y[i] = a**(i+1) * (y0 + sum(a**-(j+1) * x[j] for j <= i))``,
    which is two element-wise products around one running sum; the block is
    short enough that ``a**-B`` stays far from overflow.  The output is an
    array of doubles: 8 bytes a sample, where a list of floats takes 32.
    """
    a = math.exp(-2 * math.pi * _BROWN_CORNER_HZ / rate)
    block = max(1, min(4096, int(math.log(1e6) / -math.log(a))))
    up = [a ** -(i + 1) for i in range(block)]
    down = [a ** (i + 1) for i in range(block)]
    white = array("h", data)
    if sys.byteorder == "big":
        white.byteswap()
    out = array("d")
    y = 0.0
    for start in range(0, n, block):
        part = white[start:start + block]
        sums = islice(accumulate(map(operator.mul, part, up), initial=y), 1, None)
        ys = list(map(operator.mul, sums, down))
        y = ys[-1]
        out.extend(ys)
    return out


def _frames(seconds: float, rate: int) -> int:
    return max(1, round(seconds * rate))


def sound_cost(seconds: float, rate: int, color: str = "white") -> int:
    """The memory, in bytes, that :func:`noise_wav` needs at its peak for this sound."""
    check_sound(seconds, rate, color)
    return _BASE_COST + int(_frames(seconds, rate) * _SOUND_BYTES_PER_SAMPLE[color])


MAX_COST = max(image_cost(MAX_SIZE, MAX_SIZE, "rgb"), heatmap_cost(MAX_SIZE, MAX_SIZE),
               *(sound_cost(MAX_SECONDS, max(RATES), c) for c in COLORS))
"""The largest cost of any one file: a maximum-size RGB image."""


def noise_bytes_needed(seconds: float, rate: int, color: str) -> int:
    """How many random bytes :func:`noise_wav` draws for this sound."""
    check_sound(seconds, rate, color)
    n = _frames(seconds, rate)
    if color == "pink":
        return 2 * sum(_pink_row_lengths(n))
    return 2 * n


def noise_wav(data_source: DataSource, seconds: float = DEFAULT_SECONDS, rate: int = DEFAULT_RATE,
              color: str = "white") -> list[bytes]:
    """
    A 16-bit mono WAV of ``seconds`` of noise at ``rate`` Hz, shaped from
    random bytes drawn in one call of ``data_source``, in pieces (the
    header, then the samples).

    ``white`` is flat, ``pink`` falls 3 dB per octave (Voss's sum of held
    random rows) and ``brown`` 6 dB per octave (leaky integration).  Every
    colour is centred and normalised so that its peak is -1 dBFS: loud,
    without clipping.
    """
    need = noise_bytes_needed(seconds, rate, color)
    data = data_source(need)
    if len(data) != need:
        raise ValueError(f"data source gave {len(data)} bytes, not {need}")
    n = _frames(seconds, rate)
    if color == "white":
        pcm = _int16_from_lanes(_random_lanes(data, n, 16), n)
    elif color == "pink":
        pcm = _int16_from_lanes(_pink_lanes(data, n), n)
    else:
        pcm = _int16_from_floats(_brown(data, n, rate))
    out = _Pieces()
    # With the frame count set first, wave writes the header once and never
    # seeks back to patch it.
    with wave.open(cast(IO[bytes], out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.setnframes(n)
        w.writeframes(pcm)
    return out.pieces
