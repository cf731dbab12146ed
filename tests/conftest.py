"""Shared fixtures: random-weight checkpoints, test images, and a backend built the way `_wsgi.py` builds it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkpoints import save_random_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def vit_t_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MobileSAM checkpoint file with random (blob-making) weights."""
    return save_random_checkpoint("vit_t", tmp_path_factory.mktemp("models") / "mobile_sam.pt")


@pytest.fixture(scope="session")
def vit_t_settings(vit_t_checkpoint: Path):
    from sam_ls_backend.settings import Settings

    return Settings.from_env({}, MOBILESAM_CHECKPOINT=str(vit_t_checkpoint), LABEL_STUDIO_URL="http://127.0.0.1:9")


@pytest.fixture(scope="session")
def vit_t_predictor(vit_t_settings):
    """The predictor loaded through the same code a user's checkpoint takes."""
    from sam_ls_backend.predictors.registry import load_predictor

    return load_predictor(vit_t_settings)


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """An H×W×3 uint8 RGB picture of a few coloured shapes on a gradient, different for every seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                      np.full_like(xx, 40 * (seed % 6))], axis=-1).astype(np.uint8)
    for _ in range(4):
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        r = rng.integers(min(width, height) // 10, min(width, height) // 3)
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 256, size=3)
    return image


def memory_owner(array: np.ndarray) -> object:
    """The object that owns an array's memory (an mmap for what the backend keeps apart from the heap)."""
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array.obj if isinstance(array, memoryview) else array


@pytest.fixture(scope="session")
def image_host():
    """Label Studio's /data routes on loopback, requiring the token the backend is configured with."""
    from image_host import ImageHost

    host = ImageHost()
    yield host
    host.close()


@pytest.fixture(scope="session")
def make_client(vit_t_predictor, image_host):
    """Build a Flask test client around the shared predictor, with a fresh cache and optional settings."""
    from sam_ls_backend.backend import SamBackend
    from sam_ls_backend.server import create_app
    from sam_ls_backend.settings import Settings

    def make(**overrides: str):
        settings = Settings.from_env({}, LABEL_STUDIO_URL=image_host.url, LABEL_STUDIO_API_KEY=image_host.token,
                                     **overrides)
        backend = SamBackend(settings, vit_t_predictor)
        return create_app(settings, backend).test_client(), backend

    return make


@pytest.fixture
def encoder_calls(vit_t_predictor):
    """Counts real forward passes of the image encoder while a test runs."""
    calls = []
    handle = vit_t_predictor.model.image_encoder.register_forward_hook(lambda *args: calls.append(1))
    yield calls
    handle.remove()
