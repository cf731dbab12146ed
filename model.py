"""The Label Studio-facing model: smart keypoints and rectangles on a task's image in, brush masks out."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from embedding_cache import EmbeddingCache
from errors import InvalidRequest
from image_embeddings import ImageEmbeddings
from images import ImageSource
from label_config import LabelConfig, parse_label_config
from predictor import Embedding, Predictor
from prompts import Prompt, prompts_from_regions
from results import to_brush_result
from settings import Settings
from shared_cache import SharedEmbeddings, model_fingerprint

log = logging.getLogger(__name__)

MAX_TASKS = 1000


@dataclass
class PredictStats:
    """What one /predict did, for the request's log line."""

    tasks: int = 0
    points: int = 0
    boxes: int = 0
    regions: int = 0
    cache_hits: int = 0  # embeddings found in this process's cache
    shared_hits: int = 0  # embeddings found in the shared (Redis) cache
    encoder_runs: int = 0
    warmed: int = 0  # images queued for embedding when tasks were opened
    interactive: bool = False


class SamBackend:
    """Answers Label Studio's /setup and /predict with SAM masks; safe to call from many threads."""

    model_class = "SamBackend"

    def __init__(self, settings: Settings, predictor: Predictor, shared: SharedEmbeddings | None = None) -> None:
        self.settings = settings
        self.predictor = predictor
        self.model_version = settings.model_version or f"{settings.sam_choice}-{predictor.model_type}"
        self.images = ImageSource(settings)
        self.cache = EmbeddingCache(settings.embedding_cache_mb * 2**20)
        if shared is None and settings.redis_url:
            namespace = model_fingerprint(self.model_version, settings.model_files)
            shared = SharedEmbeddings(settings.redis_url, namespace, settings.redis_ttl_hours * 3600)
        self.embeddings = ImageEmbeddings(settings, predictor, self.images, self.cache, shared)
        self._schemas: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def setup(self, body: Any) -> dict:
        """Remember the project's config and Label Studio's address; never loads weights (LS waits 3 s)."""
        if not isinstance(body, dict):
            raise InvalidRequest("the /setup body must be a JSON object")
        project, schema = body.get("project"), body.get("schema")
        if isinstance(project, str) and isinstance(schema, str):
            with self._lock:
                self._remember(self._schemas, project, schema, limit=256)
        hostname, token = body.get("hostname"), body.get("access_token")
        self.images.use_label_studio(hostname if isinstance(hostname, str) else None,
                                     token if isinstance(token, str) else None)
        return {"model_version": self.model_version}

    def predict(self, body: Any, stats: PredictStats | None = None) -> dict:
        """One prediction per task; tasks get masks only when the request carries smart regions."""
        stats = stats or PredictStats()
        tasks, regions, config = self._parse_predict(body)
        stats.tasks = len(tasks)
        if regions is None:
            stats.warmed = self._warm(tasks, config)
            # An empty list per task: Label Studio then stores no (empty) prediction for the task.
            return {"results": [[] for _ in tasks], "model_version": self.model_version}
        stats.interactive = True
        prompts = prompts_from_regions(regions)
        stats.points = sum(len(p.points) for p in prompts)
        stats.boxes = sum(p.box is not None for p in prompts)
        predictions = [self._prediction(self._segment(task, prompts, config, stats)) for task in tasks]
        stats.regions = sum(len(p["result"]) for p in predictions)
        return {"results": predictions, "model_version": self.model_version}

    def _segment(self, task: dict, prompts: list[Prompt], config: LabelConfig, stats: PredictStats) -> list[dict]:
        """Brush regions for every prompt, each decoded on the embedding of the image it was drawn on."""
        results = []
        embeddings: dict[str, Embedding] = {}
        for prompt in prompts:
            control = config.brush_control(prompt.to_name)
            if prompt.to_name not in embeddings:
                url = _image_url(task, config.image_field(prompt.to_name))
                embeddings[prompt.to_name] = self._embedding(url, task.get("id"), stats)
            answer = self.predictor.predict(embeddings[prompt.to_name], prompt)
            results.append(to_brush_result(answer.mask, prompt.label, control, prompt.to_name, answer.score))
        return results

    def _embedding(self, url: str, task_id: Any, stats: PredictStats) -> Embedding:
        embedding, source = self.embeddings.get(url, task_id if isinstance(task_id, int) else None)
        if source == "memory":
            stats.cache_hits += 1
        elif source == "shared":
            stats.shared_hits += 1
        else:
            stats.encoder_runs += 1
        return embedding

    def _warm(self, tasks: list[dict], config: LabelConfig) -> int:
        """Queue the images of opened tasks for embedding, so the first click finds them ready."""
        queued = 0
        for task in tasks[: self.settings.warm_max_tasks]:
            for to_name in config.brush_controls:
                url = task["data"].get(config.image_fields.get(to_name, ""))
                if isinstance(url, str) and url.strip():
                    task_id = task.get("id")
                    queued += self.embeddings.warm(url.strip(), task_id if isinstance(task_id, int) else None)
        return queued

    def _parse_predict(self, body: Any) -> tuple[list[dict], list | None, LabelConfig]:
        """Check the /predict body's shape; returns tasks, the smart regions (None if not interactive), config."""
        if not isinstance(body, dict):
            raise InvalidRequest("the /predict body must be a JSON object")
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise InvalidRequest("'tasks' must be a non-empty list")
        if len(tasks) > MAX_TASKS:
            raise InvalidRequest(f"'tasks' holds {len(tasks)} tasks; at most {MAX_TASKS} per request")
        for index, task in enumerate(tasks):
            if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                raise InvalidRequest(f"tasks[{index}] must be an object with a 'data' object")
        params = body.get("params") or {}
        if not isinstance(params, dict):
            raise InvalidRequest("'params' must be an object")
        context = params.get("context")
        if context is not None and not isinstance(context, dict):
            raise InvalidRequest("params.context must be an object or null")
        regions = context.get("result") if context else None
        return tasks, regions if regions not in (None, []) else None, self._label_config(body)

    def _label_config(self, body: dict) -> LabelConfig:
        xml = body.get("label_config")
        if xml is None:
            with self._lock:
                xml = self._schemas.get(str(body.get("project")))
        if not isinstance(xml, str) or not xml.strip():
            raise InvalidRequest("'label_config' is missing and /setup did not provide the project's schema")
        return parse_label_config(xml)

    def _prediction(self, result: list[dict]) -> dict:
        score = sum(region["score"] for region in result) / len(result) if result else 0.0
        return {"result": result, "score": round(score, 4), "model_version": self.model_version}

    @staticmethod
    def _remember(table: OrderedDict, key: str, value: str, limit: int) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > limit:
            table.popitem(last=False)


def _image_url(task: dict, field_name: str) -> str:
    url = task["data"].get(field_name)
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequest(f"task {task.get('id')} has no image URL in data.{field_name}")
    return url.strip()
