"""Label Studio brush RLE of a 2-D mask, computed from the mask's runs with NumPy.

Label Studio stores a brush mask as the rle-pack (thi.ng/umbrella) encoding of its H×W×4 RGBA byte
stream. The SDK's encoder (`label_studio_sdk.converter.brush.mask2rle`) builds that 4× stream and a bit
string in Python, which takes hundreds of ms on a 12-megapixel mask; `encode_rle` writes the same bytes
from the mask's runs, and `rle_json` their JSON text, as bytes (a speckled 12-megapixel mask's RLE is a
million bytes).

The bit stream, as the SDK writes it (fields big-endian, packed most significant bit first):

- header: 32 bits value count (4·H·W), 5 bits word size − 1 (7), then 4 bits each for the widths − 1 of the
  four run-length fields (3, 4, 8 and 16 bits);
- one repeat token per run of L equal values: 1 bit flag (1), 2 bits field selector, L − 1 in the selected
  field, 8 bits value. The selector is 0, 1, 2, 3 for L ≤ 8, ≤ 16, ≤ 256, longer. A run longer than 65536
  becomes tokens of 65536 values followed by one for the rest, all with the 16-bit field;
- padding: 1 to 8 zero bits up to a whole byte (a whole zero byte when the tokens end on a byte boundary).

Every pixel is 4 equal bytes, so the stream's runs are the mask's runs (row-major) times 4, and are never
shorter than 4: the SDK's single-value token never occurs. The mask is never expanded 4×.

A mask of several megapixels is cut into pieces whose runs, tokens and words are found on two threads at
once (NumPy releases the GIL), and the pieces' words are OR-ed together: the bytes do not depend on the cut.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

T = TypeVar("T")

# The header's 32-bit count holds 4 values per pixel.
MAX_PIXELS = 2**30 - 1
HEADER_BITS = 53
# Header bits after the count: word size − 1 = 7, field widths − 1 = 2, 3, 7, 15.
HEADER_TAIL = (7 << 16) | (2 << 12) | (3 << 8) | (7 << 4) | 15
CHUNK = 2**16
# Token of a run's leading 65536 values, before OR-ing in the value: flag 1, selector 3, 65536 − 1.
FULL_CHUNK = 0b111 << 24 | (CHUNK - 1) << 8
# A run of p pixels is a run of 4·p stream values, whose field is the first of the 3-, 4- and 8-bit ones
# holding 4·p − 1 (p ≤ 2, 4, 64), else the 16-bit one. Token tables by min(p, LONG_RUN):
LONG_RUN = 65
_SELECTOR = np.searchsorted([8, 16, 256], 4 * np.arange(LONG_RUN + 1))
_FIELD = np.array([3, 4, 8, 16])[_SELECTOR]
TOKEN_HEAD = (4 | _SELECTOR) << (_FIELD + 8)  # flag and selector, above the field and the value's 8 bits
TOKEN_BITS = (_FIELD + 11).astype(np.uint64)
# Masks of several megapixels are encoded in PARTS pieces at once, each of at least MIN_PART_PIXELS: below
# that, handing a piece to another thread costs more than it saves.
PARTS = 2
MIN_PART_PIXELS = 2**20
_WORKERS = ThreadPoolExecutor(PARTS - 1, thread_name_prefix="brush-rle")
# Each byte value's JSON text and a comma, NUL-padded to 4 bytes, as one little-endian uint32.
_DECIMALS = np.array([int.from_bytes(f"{value},".encode().ljust(4, b"\0"), "little") for value in range(256)],
                     dtype="<u4")


def encode_rle(mask: np.ndarray) -> list[int]:
    """Label Studio brush RLE of a 2-D mask (nonzero = painted), byte-identical to the SDK's `mask2rle`.

    Precisely: `encode_rle(mask) == mask2rle((mask != 0).astype(np.uint8) * 255)` for every 2-D array of any
    layout with at least one pixel (mask2rle wants a 2-D uint8 or int array, repeats each value 4 times
    as R, G, B, A, and encodes values as 8-bit words). A mask with no pixels, which mask2rle rejects,
    gives the bare header (count 0). Masks of 2**30 pixels or more do not fit the format's 32-bit count.
    """
    return list(encode_rle_bytes(mask))


def encode_rle_bytes(mask: np.ndarray, parts: int | None = None) -> bytes:
    """`encode_rle(mask)` as bytes, for `rle_json`: no list of a million Python ints on the way.

    A mask of several megapixels is encoded in `parts` pieces at once (default: PARTS when each piece has at
    least MIN_PART_PIXELS, else one); the bytes are the same for any number of parts.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"brush mask must be 2-D, got shape {mask.shape}")
    if mask.size > MAX_PIXELS:
        raise ValueError(f"brush mask of {mask.size} pixels exceeds the RLE limit of {MAX_PIXELS}")
    # Comparing the bytes as uint8 is about twice as fast as comparing as bool.
    values = (mask if mask.dtype == np.bool_ else mask != 0).ravel().view(np.uint8)
    header = (4 * values.size) << 21 | HEADER_TAIL
    if values.size == 0:
        return _pack(header, [])
    parts = parts or max(1, min(PARTS, values.size // MIN_PART_PIXELS))
    runs = _runs(values, parts)
    # Runs alternate in value: a piece of them from run k starts with the first pixel's value, flipped if k is odd.
    first = bool(values[0])
    pieces = [(first ^ bool(lo % 2), runs[lo:hi]) for lo, hi in _spans(runs.size, parts)]
    return _pack(header, _in_parallel(_tokens, pieces))


def rle_json(rle: bytes) -> bytes:
    """`rle` as a JSON list of ints: the UTF-8 text of `json.dumps(list(rle), separators=(",", ":"))`.

    A 4000×3000 mask can take a million bytes, which json.dumps writes one Python int at a time; this
    gathers each byte's text with NumPy and drops the padding in one pass (bench/bench_rle.py times both).
    Bytes, not str: the server joins them into the response as they are.
    """
    if not rle:
        return b"[]"
    text = _DECIMALS.take(np.frombuffer(rle, dtype=np.uint8)).tobytes().translate(None, b"\0")
    return b"".join((b"[", memoryview(text)[:-1], b"]"))  # no comma after the last value


def _runs(values: np.ndarray, parts: int) -> np.ndarray:
    """Lengths of the runs of equal values in `values` (not empty), looked for in `parts` pieces at once."""
    starts = _in_parallel(_changes, [(values, lo, hi) for lo, hi in _spans(values.size, parts)])
    return np.diff(np.concatenate(starts), prepend=0, append=values.size)


def _changes(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The positions p in [lo, hi), p ≥ 1, where `values[p]` differs from `values[p − 1]`: where runs start."""
    lo = max(lo, 1)
    return np.flatnonzero(values[lo:hi] != values[lo - 1 : hi - 1]) + lo


def _spans(size: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) bounds of up to `parts` consecutive, nearly equal, non-empty pieces of range(size)."""
    bounds = [size * i // parts for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


def _in_parallel(work: Callable[..., T], calls: list[tuple]) -> list[T]:
    """`[work(*args) for args in calls]`, the first here and the others on the workers (NumPy releases the GIL).

    A call no worker has started yet (they are busy with other requests' masks) runs here too, so a busy pool
    never makes an encoding slower than doing it all on this thread.
    """
    futures = [_WORKERS.submit(work, *args) for args in calls[1:]]
    results = [work(*calls[0])] if calls else []
    for args, future in zip(calls[1:], futures):
        results.append(work(*args) if future.cancel() else future.result())
    return results


def _tokens(first: bool, runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes and bit widths (uint64) of the repeat tokens for alternating runs of `runs` pixels."""
    key = np.minimum(runs, LONG_RUN)
    counts = 4 * runs - 1  # what a run's field holds, modulo 65536 for runs split into several tokens
    codes = TOKEN_HEAD.take(key) | (counts & (CHUNK - 1)) << 8
    codes[int(not first) :: 2] |= 255
    widths = TOKEN_BITS.take(key)
    if runs.size and runs.max() > CHUNK // 4:
        return _split_long_runs(codes, widths, counts >> 16)
    return codes.view(np.uint64), widths


def _split_long_runs(codes: np.ndarray, widths: np.ndarray, full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tokens with `full` tokens of 65536 values (and the run's value) before each; all keep the 16-bit field.

    Few runs are that long (a blank stretch of 16385 pixels or more), so only they are looked at.
    """
    long = np.flatnonzero(full)
    at = np.repeat(long, full[long])
    return np.insert(codes, at, FULL_CHUNK | codes[at] & 255).view(np.uint64), np.insert(widths, at, TOKEN_BITS[-1])


def _pack(header: int, pieces: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """The 53-bit header and the tokens (codes and widths of each piece, in order) end to end, padded like the SDK."""
    starts = np.cumsum([HEADER_BITS] + [int(widths.sum()) for _, widths in pieces])  # each piece's first bit
    nbytes = int(starts[-1]) // 8 + 1
    words = np.zeros(nbytes // 8 + 2, dtype=np.uint64)  # with room for the last token's spill
    for first_word, fields in _in_parallel(_fields, [(*piece, int(start)) for piece, start in zip(pieces, starts)]):
        words[first_word : first_word + fields.size] |= fields  # pieces share at most their boundary word
    words[0] |= np.uint64(header << (64 - HEADER_BITS))
    return words.astype(">u8").tobytes()[:nbytes]


def _fields(codes: np.ndarray, widths: np.ndarray, start: int) -> tuple[int, np.ndarray]:
    """The bit fields `codes` (uint64) of `widths` bits, end to end from bit `start`, as big-endian 64-bit words
    from word start // 64 on: that index and the words.

    Each field, left-aligned in a 64-bit word, goes to word s // 64 shifted right by s % 64 (s its first bit),
    and the bits shifted out spill into the next word. Tokens start less than 64 bits apart, so every word up
    to the last token's has a first token, and only the last token of a word can spill.
    """
    ends = np.cumsum(widths) + np.uint64(start)
    starts = ends - widths
    aligned = codes << (64 - widths)
    word, offset = starts.view(np.int64) >> 6, starts & 63
    first = np.flatnonzero(np.diff(word, prepend=-1))
    words = np.zeros(first.size + 1, dtype=np.uint64)
    words[: first.size] = np.bitwise_or.reduceat(aligned >> offset, first)
    last = np.append(first[1:], codes.size) - 1
    # A token that does not spill shifts out nothing but zeros (and NumPy shifts by 64 give 0).
    words[1:] |= aligned[last] << (64 - offset[last])
    return int(word[0]), words


def decode_rle(rle: bytes | list[int], width: int, height: int) -> np.ndarray:
    """The H×W bool mask of a Label Studio brush RLE (pixels whose alpha byte is nonzero).

    Reads every rle-pack token the format allows (repeat and literal, any word size and field widths), not
    only the ones `encode_rle` writes: annotators' brushes come from Label Studio's page. Raises ValueError
    when the stream is not a `width`×`height` RGBA mask or ends early.
    """
    reader = _BitReader(bytes(rle))
    count, word = reader.read(32), reader.read(5) + 1
    field_bits = [reader.read(4) + 1 for _ in range(4)]
    if count != 4 * width * height:
        raise ValueError(f"the RLE holds {count} values, not the {4 * width * height} of a {width}×{height} RGBA mask")
    values = np.zeros(count, dtype=np.uint8)
    done = 0
    while done < count:
        repeat = reader.read(1)
        end = done + 1 + reader.read(field_bits[reader.read(2)])
        if end > count:
            raise ValueError("the RLE describes more values than its header counts")
        if repeat:
            values[done:end] = reader.read(word)
        else:
            values[done:end] = [reader.read(word) for _ in range(end - done)]
        done = end
    return values[3::4].reshape(height, width) > 0


class _BitReader:
    """Fields of a big-endian bit stream, most significant bit first, through a small integer window."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0  # next byte to load
        self.window = 0
        self.bits = 0  # bits held in `window`

    def read(self, width: int) -> int:
        while self.bits < width:
            if self.position >= len(self.data):
                raise ValueError("the RLE ends in the middle of a field")
            self.window = (self.window << 8) | self.data[self.position]
            self.position += 1
            self.bits += 8
        self.bits -= width
        value = self.window >> self.bits
        self.window &= (1 << self.bits) - 1
        return value
