"""The Label Studio-facing model: smart keypoints and rectangles on a task's image in, brush masks and/or
polygons out (whichever controls the labeling config has for the image, or RESULT_TYPE forces)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from embedding_cache import EmbeddingCache
from errors import InvalidRequest
from image_embeddings import ImageEmbeddings
from images import ImageSource
from label_config import LabelConfig, parse_label_config
from metrics import DECODER_SECONDS
from polygons import PolygonOptions, remove_small_regions
from predictor import Embedding, MaskResult, Predictor, decode_objects
from prompts import Prompt, prompts_from_regions
from refinement import RefinementHistory
from results import to_results
from settings import Settings
from shared_cache import SharedEmbeddings, model_fingerprint

log = logging.getLogger(__name__)

MAX_TASKS = 1000
REFINEMENT_HISTORY_BYTES = 64 * 2**20


@dataclass
class PredictStats:
    """What one /predict did, for the request's log line."""

    tasks: int = 0
    points: int = 0
    boxes: int = 0
    regions: int = 0
    refined: int = 0  # objects decoded with their previous answer as mask_input
    below_threshold: int = 0  # masks dropped for a predicted IoU under SCORE_THRESHOLD
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
        self.history = RefinementHistory(REFINEMENT_HISTORY_BYTES)
        self.polygon_options = PolygonOptions(settings.polygon_tolerance, settings.polygon_max_vertices,
                                              settings.polygon_min_area)
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
        prompts = prompts_from_regions(regions, self.settings.negative_label_names)
        stats.points = sum(len(p.points) for p in prompts)
        stats.boxes = sum(p.box is not None for p in prompts)
        project = str(body.get("project"))
        predictions = [self._prediction(self._segment(project, task, prompts, config, stats)) for task in tasks]
        stats.regions = sum(len(p["result"]) for p in predictions)
        return {"results": predictions, "model_version": self.model_version}

    def _segment(self, project: str, task: dict, prompts: list[Prompt], config: LabelConfig,
                 stats: PredictStats) -> list[dict]:
        """Result regions for every prompt, the objects of each image decoded together on its embedding."""
        by_image: dict[str, list[Prompt]] = {}
        for prompt in prompts:
            by_image.setdefault(prompt.to_name, []).append(prompt)
        results = []
        for to_name, objects in by_image.items():
            controls = config.mask_controls(to_name, self.settings.result_type)
            url = _image_url(task, config.image_field(to_name))
            embedding = self._embedding(url, task.get("id"), stats)
            answers = self._decode(embedding, (project, str(task.get("id")), url, to_name), objects, stats)
            for prompt, answer in zip(objects, answers):
                threshold = self.settings.score_threshold  # 0 is off: random weights even score below 0
                if threshold > 0 and answer.score < threshold:
                    stats.below_threshold += 1
                    continue
                mask = remove_small_regions(prompt.cut_negative_boxes(answer.mask), self.settings.min_area)
                results += to_results(mask, prompt.label, controls, to_name, answer.score, self.polygon_options)
        return results

    def _decode(self, embedding: Embedding, key: tuple, objects: list[Prompt], stats: PredictStats) -> list[MaskResult]:
        """SAM's answers for the objects of one image, refining the previous round's when these prompts extend it."""
        refinable = hasattr(self.predictor, "predict_batch")
        mask_inputs = self.history.mask_inputs(key, objects) if refinable else [None] * len(objects)
        started = time.perf_counter()
        answers = decode_objects(self.predictor, embedding, objects, mask_inputs)
        per_object = (time.perf_counter() - started) / len(objects)
        for _ in objects:
            DECODER_SECONDS.observe(per_object)
        if refinable:
            self.history.remember(key, objects, mask_inputs, answers)
        stats.refined += sum(mask is not None for mask in mask_inputs)
        return answers

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
            for to_name in config.masked_images:
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
