"""Label Studio brush RLE of a 2-D mask, computed from the mask's runs with NumPy.

Label Studio stores a brush mask as the rle-pack (thi.ng/umbrella) encoding of its H×W×4 RGBA byte
stream. The SDK's encoder (`label_studio_sdk.converter.brush.mask2rle`) builds that 4× stream and a bit
string in Python, which takes hundreds of ms on a 12-megapixel mask; `encode_rle` writes the same bytes
from the mask's runs.

The bit stream, as the SDK writes it (fields big-endian, packed most significant bit first):

- header: 32 bits value count (4·H·W), 5 bits word size − 1 (7), then 4 bits each for the widths − 1 of the
  four run-length fields (3, 4, 8 and 16 bits);
- one repeat token per run of L equal values: 1 bit flag (1), 2 bits field selector, L − 1 in the selected
  field, 8 bits value. The selector is 0, 1, 2, 3 for L ≤ 8, ≤ 16, ≤ 256, longer. A run longer than 65536
  becomes tokens of 65536 values followed by one for the rest, all with the 16-bit field;
- padding: 1 to 8 zero bits up to a whole byte (a whole zero byte when the tokens end on a byte boundary).

Every pixel is 4 equal bytes, so the stream's runs are the mask's runs (row-major) times 4, and are never
shorter than 4: the SDK's single-value token never occurs. The mask is never expanded 4×.
"""

from __future__ import annotations

import numpy as np

# The header's 32-bit count holds 4 values per pixel.
MAX_PIXELS = 2**30 - 1
HEADER_BITS = 53
# Header bits after the count: word size − 1 = 7, field widths − 1 = 2, 3, 7, 15.
HEADER_TAIL = (7 << 16) | (2 << 12) | (3 << 8) | (7 << 4) | 15
FIELD_WIDTHS = np.array([3, 4, 8, 16])
# Longest run of each of the first three fields; longer runs use the 16-bit one.
FIELD_LIMITS = np.array([8, 16, 256])
CHUNK = 2**16
# Token of a run's leading 65536 values, before OR-ing in the value: flag 1, selector 3, 65536 − 1.
FULL_CHUNK = 0b111 << 24 | (CHUNK - 1) << 8


def encode_rle(mask: np.ndarray) -> list[int]:
    """Label Studio brush RLE of a 2-D mask (nonzero = painted), byte-identical to the SDK's `mask2rle`.

    Precisely: `encode_rle(mask) == mask2rle((mask != 0).astype(np.uint8) * 255)` for every 2-D array of any
    layout with at least one pixel (mask2rle wants a 2-D uint8 or int array, repeats each value 4 times
    as R, G, B, A, and encodes values as 8-bit words). A mask with no pixels, which mask2rle rejects,
    gives the bare header (count 0). Masks of 2**30 pixels or more do not fit the format's 32-bit count.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"brush mask must be 2-D, got shape {mask.shape}")
    if mask.size > MAX_PIXELS:
        raise ValueError(f"brush mask of {mask.size} pixels exceeds the RLE limit of {MAX_PIXELS}")
    painted = (mask if mask.dtype == np.bool_ else mask != 0).ravel()
    first, lengths = _runs(painted)
    codes, widths = _tokens(first, 4 * lengths)
    header = (4 * painted.size) << 21 | HEADER_TAIL
    return _pack(np.concatenate(([header], codes)), np.concatenate(([HEADER_BITS], widths)))


def _runs(painted: np.ndarray) -> tuple[bool, np.ndarray]:
    """Value of the first run and the lengths of the runs of a flat bool array; runs alternate in value."""
    if painted.size == 0:
        return False, np.zeros(0, dtype=np.int64)
    # Comparing the bytes as uint8 is about twice as fast as comparing as bool.
    values = painted.view(np.uint8)
    changes = np.flatnonzero(values[1:] != values[:-1]) + 1
    return bool(values[0]), np.diff(changes, prepend=0, append=painted.size)


def _tokens(first: bool, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes and bit widths of the repeat tokens for alternating runs of `lengths` stream values."""
    selector = np.searchsorted(FIELD_LIMITS, lengths)
    field = FIELD_WIDTHS[selector]
    value = np.zeros(lengths.size, dtype=np.int64)
    value[int(not first) :: 2] = 255
    full = (lengths - 1) // CHUNK  # tokens of 65536 values before the last one (0 unless selector is 3)
    last = (4 | selector) << (field + 8) | (lengths - full * CHUNK - 1) << 8 | value
    count = full + 1
    codes = np.repeat(FULL_CHUNK | value, count)
    codes[np.cumsum(count) - 1] = last
    return codes, np.repeat(field + 11, count)


def _pack(codes: np.ndarray, widths: np.ndarray) -> list[int]:
    """Bytes of the big-endian bit fields `codes` (at most 64 bits each) end to end, padded like the SDK."""
    ends = np.cumsum(widths)
    starts = ends - widths
    nbytes = int(ends[-1]) // 8 + 1
    # Each field, left-aligned in a 64-bit word, goes to word start // 64, shifted right by start % 64; the
    # bits shifted out spill into the next word.
    aligned = codes.astype(np.uint64) << (64 - widths).astype(np.uint64)
    word = starts // 64
    offset = starts % 64
    words = np.zeros(-(-nbytes // 8), dtype=np.uint64)
    first_in_word = np.flatnonzero(np.diff(word, prepend=-1))
    heads = aligned >> offset.astype(np.uint64)
    words[word[first_in_word]] = np.bitwise_or.reduceat(heads, first_in_word)
    # At most one field crosses each word boundary, so the spills go to distinct words.
    spill = np.flatnonzero(offset + widths > 64)
    words[word[spill] + 1] |= aligned[spill] << (64 - offset[spill]).astype(np.uint64)
    # list() of bytes is faster than ndarray.tolist() and gives the same small ints.
    return list(words.astype(">u8").tobytes()[:nbytes])
