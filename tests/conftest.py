"""Shared fixtures: random-weight checkpoints, test images, and a backend built the way `_wsgi.py` builds it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.checkpoints import save_random_checkpoint

TESTS = Path(__file__).resolve().parent
KINDS = ("unit", "integration", "e2e")

# Tests compare the torch path with SamPredictor pixel for pixel, and the servers they start (which inherit this
# environment) serve it; the default runtime's tests (tests/integration/test_runtime.py) set RUNTIME themselves.
os.environ["RUNTIME"] = "torch"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test by its folder: `pytest -m unit` is the fast loop (`make test-fast`)."""
    for item in items:
        kind = Path(item.path).resolve().relative_to(TESTS).parts[0]
        if kind in KINDS:
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def vit_t_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MobileSAM checkpoint file with random (blob-making) weights."""
    return save_random_checkpoint("vit_t", tmp_path_factory.mktemp("models") / "mobile_sam.pt")


@pytest.fixture(scope="session")
def vit_t_settings(vit_t_checkpoint: Path):
    from sam_ls_backend.settings import Settings

    return Settings.from_env({}, MOBILESAM_CHECKPOINT=str(vit_t_checkpoint), LABEL_STUDIO_URL="http://127.0.0.1:9",
                             RUNTIME="torch")


@pytest.fixture(scope="session")
def vit_t_predictor(vit_t_settings):
    """The predictor loaded through the same code a user's checkpoint takes."""
    from sam_ls_backend.predictors.registry import load_predictor

    return load_predictor(vit_t_settings)


@pytest.fixture(scope="session")
def image_host():
    """Label Studio's /data routes on loopback, requiring the token the backend is configured with."""
    from tests.support.image_host import ImageHost

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
