"""The served application: the model SAM_CHOICE names, loaded once per worker, behind the Flask routes."""

from __future__ import annotations

import logging
import sys
from typing import Any

from flask import Flask

from sam_ls_backend.backend import SamBackend
from sam_ls_backend.compute_thread import COMPUTE
from sam_ls_backend.predictors.registry import model_spec
from sam_ls_backend.server import create_app
from sam_ls_backend.settings import Settings


def build_app(settings: Settings) -> Flask:
    """Load the model and wire the Flask app around it (once per worker process)."""
    return create_app(settings, load_backend(settings))


def load_backend(settings: Settings) -> SamBackend:
    """The backend SAM_CHOICE names, with its model loaded (SAM 3: the concept detector and the tracker)."""
    # Loaded where the model will run, so no other thread keeps an OpenMP team (see compute_thread.py).
    models = COMPUTE.run(model_spec(settings.sam_choice).load, settings)
    return SamBackend(settings, models.predictor, concepts=models.concepts, video=models.video,
                      video_concepts=models.video_concepts)


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """gunicorn's configuration, from the same settings (`gunicorn.conf.py` reads it too)."""
    return {
        "bind": f"{settings.host}:{settings.port}",
        "workers": settings.workers,
        "threads": settings.threads,
        "worker_class": "gthread",
        "timeout": 120,  # Label Studio waits up to 100 s for /predict
        "graceful_timeout": 30,
        "loglevel": settings.log_level.lower(),
        "preload_app": False,  # each worker loads its own weights (and its own CUDA context)
    }


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
