"""LEARN=on: a worker's side of learning from annotations. It keeps what annotators accept, starts trainings,
and serves the decoder they adopt.

Label Studio posts every annotation event to /webhook. Created and updated annotations are queued and read on
a background thread: their masks (learning/annotations.py) go to the shared store with their image's
embedding, computed through the same cache as clicks (usually a hit: the annotator just clicked there). Deleted
annotations leave the store at once. *Start Training* (`START_TRAINING`), or LEARN_EVERY new masks, starts
`python -m sam_ls_backend.learning.trainer` in a process of the lowest priority (one training at a time for
all workers: the trainer takes a file lock). Each request first checks, at most once a second, whether
`learned.json` names another version; if so, the predictor switches decoder (on its compute thread, between
two clicks) and `model_version` becomes the base's plus `+learned-v<N>`. Embeddings stay valid: the image
encoder never changes.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sam_ls_backend.errors import BackendError, ConfigError, RuntimeUnavailable
from sam_ls_backend.learning.annotations import annotation_masks, deleted_annotations
from sam_ls_backend.learning.decoders import LearnedDecoder, LearnedDecoders
from sam_ls_backend.learning.store import AnnotationStore, SqliteStore, image_key
from sam_ls_backend.predictors.registry import model_spec
from sam_ls_backend.settings import Settings

if TYPE_CHECKING:
    from sam_ls_backend.pipelines.base import Backend

log = logging.getLogger("sam_ls_backend.learning")

KEPT_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DROPPED_ACTIONS = ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")
TRAIN_ACTION = "START_TRAINING"
QUEUE_SIZE = 256  # annotations waiting to be read; beyond, Label Studio is asked to wait (503)
CHECK_EVERY_S = 1.0  # how often a worker looks for a newly adopted decoder


def learning_files(settings: Settings) -> tuple[Path, LearnedDecoders]:
    """The base checkpoint and where its learned decoders (and the annotation store) live."""
    spec = model_spec(settings.sam_choice)
    if not spec.learns:
        raise ConfigError(f"LEARN=on fine-tunes SAM's and MobileSAM's decoder; SAM_CHOICE={settings.sam_choice} "
                          "cannot learn (SAM 2.1 and SAM 3 load through transformers, whose decoders this "
                          "backend does not train; SAM_CHOICE=ONNX has no torch weights to train)")
    checkpoint = spec.main_file(settings).path
    folder = settings.model_path(settings.learn_dir) if settings.learn_dir else checkpoint.parent
    return checkpoint, LearnedDecoders(folder, checkpoint)


def open_store(settings: Settings, decoders: LearnedDecoders) -> AnnotationStore:
    """The annotation store: Redis when REDIS_URL is set, else the SQLite file beside the decoders."""
    if settings.redis_url:
        from sam_ls_backend.learning.redis_store import RedisStore

        return RedisStore(settings.redis_url, decoders.stem, settings.learn_max_annotations, settings.learn_held_out)
    return SqliteStore(decoders.store_path, settings.learn_max_annotations, settings.learn_held_out)


class Learner:
    """One worker's learning: the webhook's annotations in, trainings out, the adopted decoder served."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self.checkpoint, self.decoders = learning_files(settings)
        self.store = open_store(settings, self.decoders)
        self.served: LearnedDecoder | None = None
        self.counts = {"kept": 0, "skipped": 0, "dropped": 0, "trainings_started": 0}
        self._queue: queue.Queue[dict] = queue.Queue(QUEUE_SIZE)
        self._reader: threading.Thread | None = None
        self._training: subprocess.Popen | None = None
        self._reporter: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stamp = -1
        self._checked = 0.0
        self.refresh(force=True)

    @property
    def version_suffix(self) -> str:
        """What `model_version` gets after the base's name: `+learned-v<N>`, or nothing for the base decoder."""
        return f"+learned-v{self.served.version}" if self.served else ""

    def webhook(self, body: dict) -> dict:
        """Handle one Label Studio webhook body; what was done, as the /webhook answer."""
        action = body.get("action")
        if action in KEPT_ACTIONS:
            self._start_reader()
            try:
                self._queue.put_nowait(body)
            except queue.Full:
                raise BackendError("the backend is still reading earlier annotations; send this one again later",
                                   status=503) from None
            return {"status": "queued", "action": action}
        if action in DROPPED_ACTIONS:
            dropped = self.store.drop_annotations(deleted_annotations(body))
            self.counts["dropped"] += dropped
            return {"status": "dropped", "action": action, "masks": dropped}
        if action == TRAIN_ACTION:
            return {"status": self.start_training(), "action": action}
        return {"status": "ignored", "action": action if isinstance(action, str) else None}

    def start_training(self) -> str:
        """Start a training in the background unless this worker's last one still runs: started or running."""
        with self._lock:
            if self._training is not None and self._training.poll() is None:
                return "running"
            self._training = subprocess.Popen(
                [sys.executable, "-m", "sam_ls_backend.learning.trainer"], stdout=subprocess.PIPE, text=True,
                env={**os.environ, **_environment(self.settings)}, cwd=Path(__file__).resolve().parents[2])
            self.counts["trainings_started"] += 1
            self._reporter = threading.Thread(target=self._report, args=(self._training,), name="learn-report",
                                              daemon=True)
            self._reporter.start()
            return "started"

    def refresh(self, force: bool = False) -> None:
        """Serve the decoder `learned.json` names, if it changed (checked at most every CHECK_EVERY_S)."""
        now = time.monotonic()
        if not force and now - self._checked < CHECK_EVERY_S:
            return
        self._checked = now
        stamp = self.decoders.status_stamp()
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            self._stamp = stamp
            served = self.decoders.served()
            if served == self.served:
                return
            try:
                self.backend.predictor.use_decoder(served)  # type: ignore[attr-defined]
            except (BackendError, RuntimeUnavailable, OSError, RuntimeError) as error:
                log.warning("still serving %s: the learned decoder v%s cannot be loaded: %s", self.served_name,
                            served.version if served else 0, getattr(error, "message", error))
                return
            self.served = served
            log.info("serving %s", self.served_name)

    @property
    def served_name(self) -> str:
        return f"the learned decoder v{self.served.version}" if self.served else "the checkpoint's own decoder"

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued annotation is stored and this worker's training ended (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            training = self._reporter is not None and self._reporter.is_alive()  # until its decoder is served
            if self._queue.unfinished_tasks == 0 and not training:
                return True
            time.sleep(0.05)
        return False

    def _start_reader(self) -> None:
        with self._lock:
            if self._reader is None or not self._reader.is_alive():  # none yet, or a forked worker's copy
                self._reader = threading.Thread(target=self._read_forever, name="learn-annotations", daemon=True)
                self._reader.start()

    def _read_forever(self) -> None:
        while True:
            body = self._queue.get()
            try:
                self._keep(body)
            except BackendError as error:
                self.counts["skipped"] += 1
                log.warning("annotation not learned from: %s", error.message)
            except Exception:
                self.counts["skipped"] += 1
                log.exception("annotation not learned from: unexpected error")
            finally:
                self._queue.task_done()

    def _keep(self, body: dict) -> None:
        found = annotation_masks(body)
        for why in found.skipped:
            log.warning("annotation region not learned from: %s", why)
        self.counts["skipped"] += len(found.skipped)
        embeddings = {}
        sizes: dict[str, tuple[int, int] | None] = {}
        for url in {mask.image_url for mask in found.masks}:
            key = image_key(url)
            sizes[key] = self.store.image_size(key)
            if sizes[key] is None:
                embeddings[key], _ = self.backend.embeddings.get(url, found.task)
                sizes[key] = embeddings[key].original_size
        masks = []
        for mask in found.masks:
            key = image_key(mask.image_url)
            size = sizes[key]
            if size != mask.mask.shape:
                self.counts["skipped"] += 1
                log.warning("annotation region %s not learned from: its mask is %s×%s, its image %s", mask.key,
                            mask.mask.shape[1], mask.mask.shape[0], f"{size[1]}×{size[0]}" if size else "unknown")
                continue
            masks.append((mask.key, key, mask.mask))
        new = self.store.replace_annotation(found.annotation, masks, embeddings)
        self.counts["kept"] += new
        if self.settings.learn_every and self.store.new_masks() >= self.settings.learn_every:
            self.start_training()

    def _report(self, process: subprocess.Popen) -> None:
        """Log the trainer's one-line report when it ends."""
        output, _ = process.communicate()
        lines = [line for line in (output or "").splitlines() if line.startswith("{")]
        try:
            report = json.loads(lines[-1]) if lines else {"status": f"failed (exit status {process.returncode})"}
        except ValueError:
            report = {"status": "unreadable report"}
        log.info("training %s", " ".join(f"{key}={value}" for key, value in report.items()))
        self.refresh(force=True)


def _environment(settings: Settings) -> dict[str, str]:
    """What the trainer must see as this worker sees it (settings given as `--kwargs` are not in os.environ)."""
    return {name: str(getattr(settings, name.lower())) for name in
            ("SAM_CHOICE", "MODEL_DIR", "MOBILESAM_CHECKPOINT", "SAM_CHECKPOINT", "LEARN_DIR", "LEARN_HELD_OUT",
             "LEARN_MAX_ANNOTATIONS", "LEARN_TIME_BUDGET", "LEARN_STEPS", "RUNTIME")} | {
        "REDIS_URL": settings.redis_url}
