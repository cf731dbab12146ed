"""encode_rle against the Label Studio SDK's own brush encoder (mask2rle) and decoder (decode_rle)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from sam_ls_backend.protocol import brush_rle
from sam_ls_backend.protocol.brush_rle import MAX_PIXELS, encode_rle, encode_rle_bytes, rle_json

ROOT = Path(__file__).resolve().parents[2]

# Pixel run lengths at the edges of the SDK's run-length fields: 4·k ≤ 8, ≤ 16, ≤ 256, ≤ 65536, then split.
FIELD_EDGES = [1, 2, 3, 4, 5, 64, 65, 16383, 16384, 16385, 32768, 32769]

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sdk_rle(mask: np.ndarray) -> list[int]:
    """The SDK's encoding of `mask`, given to mask2rle the way it expects: 2-D uint8, painted = 255."""
    return mask2rle((np.asarray(mask) != 0).astype(np.uint8) * 255)


def decoded(rle: list[int], shape: tuple[int, int]) -> np.ndarray:
    """The H×W×4 RGBA bytes the SDK decodes from `rle`."""
    return decode_rle(rle).reshape(*shape, 4)


@st.composite
def run_masks(draw: st.DrawFn) -> np.ndarray:
    """Masks built from alternating runs, with run lengths at the field edges and the 65536-value split."""
    lengths = draw(st.lists(st.one_of(st.integers(1, 6), st.integers(1, 300), st.sampled_from(FIELD_EDGES)),
                            min_size=1, max_size=12))
    flat = np.repeat(np.arange(len(lengths)) % 2 == draw(st.integers(0, 1)), lengths)
    width = draw(st.integers(1, min(flat.size, 300)))
    height = -(-flat.size // width)
    flat = np.concatenate([flat, np.full(height * width - flat.size, flat[-1])])  # the last run fills the row
    return flat.reshape(height, width)


@st.composite
def blob_masks(draw: st.DrawFn) -> np.ndarray:
    """A few filled ellipses, possibly cut by the mask's edges."""
    height, width = draw(st.integers(1, 120)), draw(st.integers(1, 120))
    yy, xx = np.ogrid[:height, :width]
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(draw(st.integers(0, 5))):
        cy, cx = draw(st.integers(-10, height + 10)), draw(st.integers(-10, width + 10))
        ry, rx = draw(st.integers(1, 80)), draw(st.integers(1, 80))
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return mask


@st.composite
def stripe_masks(draw: st.DrawFn) -> np.ndarray:
    """Stripes and checkerboards, down to alternating single pixels."""
    height, width = draw(st.integers(1, 60)), draw(st.integers(1, 60))
    period, slant = draw(st.integers(1, 9)), draw(st.integers(0, 3))
    yy, xx = np.ogrid[:height, :width]
    return (xx + slant * yy) // period % 2 == 1


noise_masks = hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40))
value_masks = hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40))


@st.composite
def masks(draw: st.DrawFn) -> np.ndarray:
    """A mask of any of the shapes above, as bool or uint8 (0/1 or any values) in any memory layout."""
    mask = draw(st.one_of(run_masks(), blob_masks(), stripe_masks(), noise_masks, value_masks))
    dtype = draw(st.sampled_from(["as is", "uint8 0/1", "uint8 values"]))
    if dtype == "uint8 0/1":
        mask = (mask != 0).astype(np.uint8)
    elif dtype == "uint8 values":
        mask = np.where(mask != 0, draw(st.integers(1, 255)), 0).astype(np.uint8)
    return draw(st.sampled_from([same, fortran, transposed_view, strided_view, reversed_view]))(mask)


def same(mask: np.ndarray) -> np.ndarray:
    return mask


def fortran(mask: np.ndarray) -> np.ndarray:
    return np.asfortranarray(mask)


def transposed_view(mask: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(mask.T).T


def strided_view(mask: np.ndarray) -> np.ndarray:
    """`mask` as every other row and every third column of a larger array of ones."""
    base = np.ones((2 * mask.shape[0], 3 * mask.shape[1]), dtype=mask.dtype)
    base[::2, ::3] = mask
    return base[::2, ::3]


def reversed_view(mask: np.ndarray) -> np.ndarray:
    return mask[::-1, ::-1].copy()[::-1, ::-1]


@PROPERTY
@given(masks())
def test_matches_the_sdk_byte_for_byte(mask: np.ndarray) -> None:
    assert encode_rle(mask) == sdk_rle(mask)


@settings(PROPERTY, max_examples=120)
@given(masks())
def test_the_sdk_decodes_the_mask_in_all_four_channels(mask: np.ndarray) -> None:
    rgba = decoded(encode_rle(mask), mask.shape)
    assert np.array_equal(rgba, np.repeat((mask != 0)[..., None] * 255, 4, axis=2))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (3, 5), (128, 128), (300, 300)])
@pytest.mark.parametrize("fill", [0, 1])
def test_constant_masks(shape: tuple[int, int], fill: int) -> None:
    mask = np.full(shape, fill, dtype=bool)
    rle = encode_rle(mask)
    assert rle == sdk_rle(mask)
    assert np.array_equal(decoded(rle, shape)[..., 3], mask * 255)


@pytest.mark.parametrize("run", FIELD_EDGES + [3 * 16384, 3 * 16384 + 1, 100_000])
def test_run_lengths_at_the_field_edges_and_beyond_the_16_bit_field(run: int) -> None:
    for mask in (np.ones((1, run), bool), np.ones((run, 1), bool), np.arange(run + 2)[None, :] > 0):
        rle = encode_rle(mask)
        assert rle == sdk_rle(mask)
        assert np.array_equal(decoded(rle, mask.shape)[..., 0], mask * 255)


def test_several_runs_beyond_the_16_bit_field_among_short_ones() -> None:
    runs = [3, 70_000, 1, 2, 300_000, 5, 16_385, 16_384, 64, 65, 1]
    mask = np.repeat(np.arange(len(runs)) % 2 == 1, runs)[None, :]
    assert encode_rle(mask) == sdk_rle(mask)


def test_alternating_pixels() -> None:
    mask = np.indices((31, 33)).sum(axis=0) % 2 == 0
    assert encode_rle(mask) == sdk_rle(mask)


def test_a_whole_zero_byte_pads_tokens_that_end_on_a_byte_boundary() -> None:
    # 53 header bits + one 19-bit token (20 values) = 72 bits; the SDK still appends 8 zero bits.
    mask = np.ones((1, 5), bool)
    assert encode_rle(mask) == sdk_rle(mask)
    assert len(encode_rle(mask)) == 10 and encode_rle(mask)[-1] == 0


def test_any_nonzero_uint8_value_is_painted() -> None:
    values = np.array([[0, 1, 2, 127], [128, 254, 255, 0]], dtype=np.uint8)
    assert encode_rle(values) == encode_rle(values != 0) == sdk_rle(values)


def test_a_picture_sized_mask_with_many_runs() -> None:
    rng = np.random.default_rng(7)
    yy, xx = np.ogrid[:768, :1024]
    mask = ((yy - 384) / 300) ** 2 + ((xx - 512) / 400) ** 2 <= 1
    for _ in range(60):
        cy, cx, r = rng.integers(0, 768), rng.integers(0, 1024), rng.integers(3, 60)
        mask ^= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    assert encode_rle(mask) == sdk_rle(mask)


def test_the_result_is_a_json_list_of_plain_ints() -> None:
    rle = encode_rle(np.eye(9, dtype=bool))
    assert all(type(byte) is int and 0 <= byte <= 255 for byte in rle)
    assert json.loads(json.dumps(rle)) == rle


@PROPERTY
@given(masks())
def test_the_bytes_and_the_json_text_are_those_of_the_list(mask: np.ndarray) -> None:
    rle = encode_rle(mask)
    assert encode_rle_bytes(mask) == bytes(rle)
    assert rle_json(bytes(rle)) == json.dumps(rle, separators=(",", ":")).encode()


@PROPERTY
@given(masks(), st.integers(1, 6))
def test_any_number_of_parts_gives_the_same_bytes(mask: np.ndarray, parts: int) -> None:
    assert encode_rle_bytes(mask, parts=parts) == bytes(sdk_rle(mask))


def test_a_speckled_picture_sized_mask_is_encoded_in_parts_to_the_same_bytes() -> None:
    mask = np.random.default_rng(5).random((1500, 2000)) < 0.8  # 3 megapixels, about a million runs
    assert mask.size >= brush_rle.PARTS * brush_rle.MIN_PART_PIXELS  # so the default splits it
    rle = encode_rle_bytes(mask)
    assert rle == encode_rle_bytes(mask, parts=1) == bytes(sdk_rle(mask))


def test_pieces_no_worker_is_free_for_are_encoded_by_the_caller() -> None:
    mask = np.random.default_rng(6).random((300, 200)) < 0.5
    expected = encode_rle_bytes(mask, parts=1)
    release = threading.Event()
    blockers = [brush_rle._WORKERS.submit(release.wait) for _ in range(brush_rle.PARTS)]
    try:
        with ThreadPoolExecutor(max_workers=1) as caller:
            encoding = caller.submit(encode_rle_bytes, mask, parts=4)
            assert encoding.result(timeout=60) == expected  # the busy worker is not waited for
    finally:
        release.set()
    assert all(blocker.result(timeout=60) for blocker in blockers)


def test_the_json_text_of_every_byte_value() -> None:
    every = bytes(range(256)) + bytes(range(255, -1, -1))
    assert rle_json(every) == json.dumps(list(every), separators=(",", ":")).encode()
    assert (rle_json(b""), rle_json(b"\0"), rle_json(b"\xff")) == (b"[]", b"[0]", b"[255]")


def test_a_mask_without_pixels_is_the_bare_header() -> None:
    # mask2rle fails on it; the header alone (count 0) decodes to nothing.
    assert decode_rle(encode_rle(np.zeros((0, 4), bool))).size == 0
    assert encode_rle(np.zeros((0, 4), bool)) == encode_rle(np.zeros((3, 0), np.uint8))


@pytest.mark.parametrize("shape", [(4,), (2, 2, 1), ()])
def test_only_2d_masks_are_accepted(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="2-D"):
        encode_rle(np.zeros(shape, bool))


def test_masks_beyond_the_32_bit_count_are_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_rle(np.broadcast_to(np.zeros(1, bool), (MAX_PIXELS + 1, 1)))


def test_concurrent_calls_give_the_same_results() -> None:
    rng = np.random.default_rng(3)
    inputs = [rng.random((200, 300)) < p for p in np.linspace(0.01, 0.99, 16)]
    expected = [encode_rle(mask) for mask in inputs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(encode_rle, inputs * 4)) == expected * 4
        # in pieces: the callers share the encoder's worker threads
        in_pieces = pool.map(lambda mask: encode_rle_bytes(mask, parts=3), inputs * 4)
        assert list(in_pieces) == [bytes(rle) for rle in expected * 4]


def test_the_module_does_not_import_the_sdk() -> None:
    code = "import sys, sam_ls_backend.protocol.brush_rle; assert 'label_studio_sdk' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
