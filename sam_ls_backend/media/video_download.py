"""A task's video on disk for the length of one request: downloaded like images, then deleted.

The file goes to a fresh folder under the system's temporary directory (TMPDIR), through the same
`ImageSource` as images: Label Studio's credentials only on its own host, the same egress rules, a byte cap
(VIDEO_MAX_MB) and a whole-exchange deadline (VIDEO_DOWNLOAD_TIMEOUT). The folder is removed when the request
is done, whatever happened, so the disk holds at most one video per request being served: at most
THREADS × VIDEO_MAX_MB per worker.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sam_ls_backend.media.fetch import ImageSource, Limits
from sam_ls_backend.settings import Settings

TEMP_PREFIX = "sam-ls-video-"


def video_limits(settings: Settings) -> Limits:
    return Limits(settings.video_max_mb * 2**20, f"VIDEO_MAX_MB={settings.video_max_mb}",
                  settings.video_download_timeout, "VIDEO_DOWNLOAD_TIMEOUT", what="task video")


@contextmanager
def downloaded_video(source: ImageSource, settings: Settings, url: str, task_id: int | None) -> Iterator[Path]:
    """The path of the task's video, downloaded; the file and its folder are gone once the block ends."""
    folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    try:
        path = folder / "video"
        with path.open("wb") as target:
            source.save(url, task_id, target, video_limits(settings))
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)
