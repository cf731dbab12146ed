"""Label Studio 1.23.2, the backend and Debian's headless Chromium, started together for the page-driving
scripts (bench_ui.py, screenshots.py): everything on loopback, in a scratch directory removed afterwards."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from tests.support.backend_process import BackendProcess
from tests.support.browser import Chromium, LabelingPage, logged_in_chromium
from tests.support.checkpoints import save_random_checkpoint
from tests.support.label_studio import ADMIN_EMAIL, ADMIN_PASSWORD, LabelStudio, fresh_data_dir
from tests.support.scenes import scene

BACKEND_START_S = 180.0


@dataclass(frozen=True)
class UiStack:
    """The running processes, the browser and the scratch directory."""

    label_studio: LabelStudio
    backend: BackendProcess
    chromium: Chromium
    work: Path

    def open(self, config: str, size: tuple[int, int], seed: int = 5, auto_accept: bool = True,
             backend_url: str | None = None) -> LabelingPage:
        """A new page on a new project's task showing a generated `size` scene, Auto-Annotation on."""
        width, height = size
        path = self.work / f"scene-{width}x{height}-{seed}.png"
        Image.fromarray(scene(width, height, seed=seed)).save(path)
        project_id = self.label_studio.create_project(f"sam-ls-backend {width}x{height}", config)
        task_id = self.label_studio.import_image(project_id, path)
        self.label_studio.connect_ml_backend(project_id, backend_url or self.backend.url)
        labeling = LabelingPage(self.chromium.context.new_page(), self.label_studio.url)
        labeling.open_task(project_id, task_id)
        labeling.set_toggle("auto-annotation", True)
        labeling.set_toggle("auto-accept", auto_accept)
        return labeling


@contextlib.contextmanager
def ui_stack(env: dict[str, str] | None = None) -> Iterator[UiStack]:
    """Label Studio, a random-weight MobileSAM backend (plus `env`) and a logged-in Chromium."""
    with tempfile.TemporaryDirectory(prefix="sam-ls-ui-") as scratch:
        work = Path(scratch)
        checkpoint = save_random_checkpoint("vit_t", work / "mobile_sam.pt")
        with LabelStudio(fresh_data_dir(work / "data"), work / "label-studio.log") as label_studio:
            settings = {"SAM_CHOICE": "MobileSAM", "MOBILESAM_CHECKPOINT": str(checkpoint), "DEVICE": "cpu",
                        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
                        "LOG_LEVEL": "INFO", **(env or {})}
            backend = BackendProcess(settings, log_path=work / "backend.log")
            try:
                backend.wait_ready(BACKEND_START_S)
                with logged_in_chromium(label_studio.url, ADMIN_EMAIL, ADMIN_PASSWORD) as chromium:
                    yield UiStack(label_studio, backend, chromium, work)
            finally:
                backend.stop()
