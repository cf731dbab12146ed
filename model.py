"""The Label Studio-facing model: smart keypoints and rectangles on a task's image in, brush masks and/or
polygons out (whichever controls the labeling config has for the image, or RESULT_TYPE forces). With SAM 3,
a typed concept and the rectangles are a concept prompt: one region per instance found, each with its score."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from concepts import ConceptPrompt, split_concept_regions
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

if TYPE_CHECKING:
    from sam3_concepts import ConceptSegmenter

log = logging.getLogger(__name__)

MAX_TASKS = 1000
REFINEMENT_HISTORY_BYTES = 64 * 2**20
# EMBEDDING_PRECISION=mixed: the images used most recently, those annotators are clicking on, stay float32.
EXACT_RECENT_IMAGES = 8
DETECTIONS_BYTES = 256 * 2**20  # SAM 3 answers kept so a new threshold needs no model run (~33 MB each)
REMEMBERED_CONCEPTS = 4096
DEFAULT_CONCEPT_THRESHOLD = 0.5  # SAM 3's own default confidence, used while SCORE_THRESHOLD is 0


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
    concepts: int = 0  # SAM 3 concept prompts answered
    detector_runs: int = 0  # of them, answered by running SAM 3's detector (the others only re-thresholded)
    interactive: bool = False


class SamBackend:
    """Answers Label Studio's /setup and /predict with SAM masks; safe to call from many threads."""

    model_class = "SamBackend"

    def __init__(self, settings: Settings, predictor: Predictor, shared: SharedEmbeddings | None = None,
                 concepts: ConceptSegmenter | None = None) -> None:
        self.settings = settings
        self.predictor = predictor
        self.model_version = settings.model_version or f"{settings.sam_choice}-{predictor.model_type}"
        self.images = ImageSource(settings)
        exact = EXACT_RECENT_IMAGES if settings.embedding_precision == "mixed" else None
        self.cache = EmbeddingCache(settings.embedding_cache_mb * 2**20, exact_entries=exact)
        if shared is None and settings.redis_url:
            namespace = model_fingerprint(self.model_version, settings.model_files)
            shared = SharedEmbeddings(settings.redis_url, namespace, settings.redis_ttl_hours * 3600)
        self.embeddings = ImageEmbeddings(settings, predictor, self.images, self.cache, shared)
        self.history = RefinementHistory(REFINEMENT_HISTORY_BYTES)
        self.concepts = concepts
        if concepts is not None:
            self.concept_embeddings = ImageEmbeddings(settings, concepts, self.images, self.cache, shared,
                                                      kind="concept:")
            self.detections = EmbeddingCache(DETECTIONS_BYTES)
        self._task_concepts: OrderedDict[tuple, tuple[str, float | None]] = OrderedDict()
        self.polygon_options = PolygonOptions(settings.polygon_tolerance, settings.polygon_max_vertices,
                                              settings.polygon_min_area)
        self._schemas: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def first_embeddings(self) -> ImageEmbeddings:
        """The embeddings a task's first prompt most likely needs: SAM 3's concept features, else the predictor's."""
        return self.concept_embeddings if self.concepts is not None else self.embeddings

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
        project = str(body.get("project"))
        concepts: list[ConceptPrompt] = []
        if self.concepts is not None:
            concepts, regions = split_concept_regions(regions, self.settings.negative_label_names)
        prompts = prompts_from_regions(regions, self.settings.negative_label_names) if regions or not concepts else []
        stats.points = sum(len(p.points) for p in prompts)
        stats.boxes = sum(p.box is not None for p in prompts) + sum(len(c.boxes) for c in concepts)
        predictions = [self._prediction(self._segment(project, task, prompts, config, stats)
                                        + self._segment_concepts(project, task, concepts, config, stats))
                       for task in tasks]
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

    def _segment_concepts(self, project: str, task: dict, concepts: list[ConceptPrompt], config: LabelConfig,
                          stats: PredictStats) -> list[dict]:
        """One region per instance of each image's concept, above the confidence threshold."""
        results = []
        for concept in concepts:
            text, threshold = self._concept_text(project, task, concept)
            controls = config.mask_controls(concept.to_name, self.settings.result_type)
            url = _image_url(task, config.image_field(concept.to_name))
            embedding, _ = self.concept_embeddings.get(url, task.get("id") if isinstance(task.get("id"), int) else None)
            height, width = embedding.original_size
            scale = (width / 100.0, height / 100.0, width / 100.0, height / 100.0)
            boxes = [tuple(v * s for v, s in zip(box, scale)) for box in concept.boxes]
            key = repr((self.concept_embeddings.digest(url), text, boxes, concept.box_labels))
            runs: list[int] = []

            def detect() -> object:
                runs.append(1)
                return self.concepts.detect(embedding, text, boxes, list(concept.box_labels))

            started = time.perf_counter()
            detections = self.detections.get_or_compute(key, detect)
            if runs:
                DECODER_SECONDS.observe(time.perf_counter() - started)
            stats.concepts += 1
            stats.detector_runs += len(runs)
            label = concept_label(text, concept.label, controls)
            for instance in self.concepts.instances(detections, threshold):
                mask = remove_small_regions(instance.mask, self.settings.min_area)
                results += to_results(mask, label, controls, concept.to_name, instance.score, self.polygon_options)
        return results

    def _concept_text(self, project: str, task: dict, concept: ConceptPrompt) -> tuple[str, float]:
        """The concept and threshold for this request: typed now, else typed earlier on the task, else the label."""
        key = (project, str(task.get("id")), concept.to_name)
        with self._lock:
            text, threshold = self._task_concepts.get(key, (None, None))
            text = concept.text or text or concept.label
            threshold = concept.threshold if concept.threshold is not None else threshold
            if text:
                self._remember(self._task_concepts, key, (text, threshold), limit=REMEMBERED_CONCEPTS)
        if not text:
            raise InvalidRequest(f"no concept for image '{concept.to_name}': type one in the TextArea "
                                 "or draw a labelled rectangle")
        if threshold is None:
            threshold = self.settings.score_threshold or DEFAULT_CONCEPT_THRESHOLD
        return text, threshold

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
                    queued += self.first_embeddings.warm(url.strip(), task_id if isinstance(task_id, int) else None)
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


def concept_label(text: str, rectangle_label: str | None, controls: list) -> str | None:
    """The label to paint instances of `text` with: the rectangle's, else a control label the text names."""
    if rectangle_label:
        return rectangle_label
    labels = [label for control in controls for label in control.labels]
    words = text.lower().split()
    for candidate in ([label for label in labels if label.lower() == text.lower()]
                      + [label for label in labels if label.lower() in words]):
        return candidate
    return labels[0] if labels else None


def _image_url(task: dict, field_name: str) -> str:
    url = task["data"].get(field_name)
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequest(f"task {task.get('id')} has no image URL in data.{field_name}")
    return url.strip()
