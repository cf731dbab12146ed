"""The Label Studio-facing model: `SamBackend` answers /setup and /predict.

A /predict with smart regions is read once (protocol/regions.py) and handed to the pipelines (pipelines/):
VideoRectangles are tracked through the task's video (SAM 2.1, SAM 3); clicks and rectangles become brush
masks and/or polygons (whichever output controls the labeling config has for the image, or RESULT_TYPE
forces); with SAM 3, a typed concept and rectangles find every instance, each with its score. A /predict
without regions (a task opened) is offered to the pipelines' prelabel (a video task's drawn boxes are
tracked), else warms the embedding of its image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sam_ls_backend.embeddings.cache import EmbeddingCache
from sam_ls_backend.embeddings.lookup import ImageEmbeddings
from sam_ls_backend.embeddings.refinement import RefinementHistory
from sam_ls_backend.embeddings.shared import SharedEmbeddings
from sam_ls_backend.errors import InvalidRequest
from sam_ls_backend.learning.learner import Learner
from sam_ls_backend.lru import LRU
from sam_ls_backend.media.fetch import ImageSource
from sam_ls_backend.outputs import images_with_outputs
from sam_ls_backend.pipelines import PIPELINES
from sam_ls_backend.pipelines.base import Pipeline, PredictStats, Request
from sam_ls_backend.predictors.base import Embedding, Predictor
from sam_ls_backend.predictors.files import fingerprint
from sam_ls_backend.predictors.registry import model_spec
from sam_ls_backend.protocol.label_config import LabelConfig, parse_label_config
from sam_ls_backend.protocol.polygons import PolygonOptions
from sam_ls_backend.protocol.regions import read_regions
from sam_ls_backend.settings import Settings

if TYPE_CHECKING:
    from sam_ls_backend.predictors.sam3 import ConceptSegmenter
    from sam_ls_backend.predictors.video import VideoTracker
    from sam_ls_backend.predictors.video_concepts import ConceptVideoTracker

__all__ = ["PredictStats", "SamBackend"]

log = logging.getLogger(__name__)

MAX_TASKS = 1000
REFINEMENT_HISTORY_BYTES = 64 * 2**20
# EMBEDDING_PRECISION=mixed: the images used most recently, those annotators are clicking on, stay float32.
EXACT_RECENT_IMAGES = 8
REMEMBERED_PROJECTS = 256


class SamBackend:
    """Answers Label Studio's /setup and /predict with SAM masks; safe to call from many threads."""

    model_class = "SamBackend"

    def __init__(self, settings: Settings, predictor: Predictor, shared: SharedEmbeddings | None = None,
                 concepts: ConceptSegmenter | None = None, video: Callable[[], VideoTracker] | None = None,
                 video_concepts: Callable[[], ConceptVideoTracker] | None = None) -> None:
        self.settings = settings
        self.video_loader = video  # loads the video tracker on the first video request
        self.video_concept_loader = video_concepts  # SAM 3's concept tracker, on the first video concept request
        self.predictor = predictor
        self.base_model_version = settings.model_version or f"{settings.sam_choice}-{predictor.model_type}"
        self.images = ImageSource(settings)
        exact = EXACT_RECENT_IMAGES if settings.embedding_precision == "mixed" else None
        self.cache: EmbeddingCache[Embedding] = EmbeddingCache(settings.embedding_cache_mb * 2**20, exact_entries=exact)
        if shared is None and settings.redis_url:
            # Replicas on another runtime do not share embeddings: ONNX Runtime's differ from torch's in the last bits.
            runtime = getattr(predictor, "runtime", "torch")
            files = model_spec(settings.sam_choice).files(settings)
            namespace = fingerprint(f"{self.base_model_version}:{runtime}", files)
            shared = SharedEmbeddings(settings.redis_url, namespace, settings.redis_ttl_hours * 3600)
        self.embeddings = ImageEmbeddings(settings, predictor, self.images, self.cache, shared)
        self.history = RefinementHistory(REFINEMENT_HISTORY_BYTES)
        self.concepts = concepts
        self.concept_embeddings = None if concepts is None else ImageEmbeddings(
            settings, concepts, self.images, self.cache, shared, kind="concept:")
        self.polygon_options = PolygonOptions(settings.polygon_tolerance, settings.polygon_max_vertices,
                                              settings.polygon_min_area)
        self.pipelines: list[Pipeline] = [p for p in (build(self) for build in PIPELINES) if p is not None]
        self._schemas: LRU[str, str] = LRU(REMEMBERED_PROJECTS)  # project -> labeling config from /setup
        self.learner = Learner(settings, self) if settings.learn == "on" else None

    @property
    def model_version(self) -> str:
        """The base model's name, with the learned decoder's version when one is served (LEARN=on)."""
        if self.learner is None:
            return self.base_model_version
        self.learner.refresh()
        return self.base_model_version + self.learner.version_suffix

    def webhook(self, body: Any) -> dict:
        """Label Studio's annotation events (LEARN=on: learned from; otherwise acknowledged and ignored)."""
        if not isinstance(body, dict):
            raise InvalidRequest("the /webhook body must be a JSON object")
        if self.learner is None:
            action = body.get("action")
            return {"status": "ignored", "action": action if isinstance(action, str) else None}
        return self.learner.webhook(body)

    @property
    def first_embeddings(self) -> ImageEmbeddings:
        """The embeddings a task's first prompt most likely needs: SAM 3's concept features, else the predictor's."""
        return self.concept_embeddings or self.embeddings

    def setup(self, body: Any) -> dict:
        """Remember the project's config and Label Studio's address; never loads weights (LS waits 3 s)."""
        if not isinstance(body, dict):
            raise InvalidRequest("the /setup body must be a JSON object")
        project, schema = body.get("project"), body.get("schema")
        if isinstance(project, str) and isinstance(schema, str):
            self._schemas.put(project, schema)
        hostname, token = body.get("hostname"), body.get("access_token")
        self.images.use_label_studio(hostname if isinstance(hostname, str) else None,
                                     token if isinstance(token, str) else None)
        return {"model_version": self.model_version}

    def predict(self, body: Any, stats: PredictStats | None = None) -> dict:
        """One prediction per task; tasks get masks only when the request carries smart regions."""
        stats = stats or PredictStats()
        model_version = self.model_version  # serves a newly adopted decoder (LEARN=on) from here on
        request, raw_regions = self._parse_predict(body)
        stats.tasks = len(request.tasks)
        if raw_regions is None:
            return {"results": self._prelabel(request, stats, model_version), "model_version": model_version}
        stats.interactive = True
        regions = read_regions(raw_regions, self.settings.negative_label_names)
        work = []
        for pipeline in self.pipelines:
            prompts, regions = pipeline.take(regions, stats)
            if prompts:
                work.append((pipeline, prompts))
        if not work:
            raise InvalidRequest("context.result holds no keypointlabels or rectanglelabels region to segment from "
                                 "(nor a videorectangle to track)")
        predictions = [self._prediction([region for pipeline, prompts in work
                                         for region in pipeline.answer(request, task, prompts, stats)], model_version)
                       for task in request.tasks]
        stats.regions = sum(len(p["result"]) for p in predictions)
        return {"results": predictions, "model_version": model_version}

    def _prelabel(self, request: Request, stats: PredictStats, model_version: str) -> list:
        """A prediction for each task some pipeline labels without regions; the others' images are warmed."""
        answers: list = []
        unlabelled = []
        for task in request.tasks:
            result = next((found for pipeline in self.pipelines
                           if (found := pipeline.prelabel(request, task, stats)) is not None), None)
            if result is None:
                unlabelled.append(task)
            # An empty list for a task: Label Studio then stores no (empty) prediction for it.
            answers.append([] if result is None else self._prediction(result, model_version))
        stats.warmed = self._warm(unlabelled, request.config)
        return answers

    def _warm(self, tasks: list[dict], config: LabelConfig) -> int:
        """Queue the images of opened tasks for embedding, so the first click finds them ready."""
        queued = 0
        for task in tasks[: self.settings.warm_max_tasks]:
            for to_name in images_with_outputs(config):
                url = task["data"].get(config.image_fields[to_name])
                if isinstance(url, str) and url.strip():
                    task_id = task.get("id")
                    queued += self.first_embeddings.warm(url.strip(), task_id if isinstance(task_id, int) else None)
        return queued

    def _parse_predict(self, body: Any) -> tuple[Request, list | None]:
        """Check the /predict body's shape; returns the request and its smart regions (None if not interactive)."""
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
        if context and "event" in context:
            raise InvalidRequest(f"params.context.event ({str(context['event'])[:40]!r}) is Label Studio Enterprise's "
                                 "video tracking protocol, which this backend does not speak; it answers "
                                 "context.result (a label clicked on a VideoRectangle) and tasks without context",
                                 status=422)
        regions = context.get("result") if context else None
        request = Request(str(body.get("project")), tasks, self._label_config(body))
        return request, regions if regions not in (None, []) else None

    def _label_config(self, body: dict) -> LabelConfig:
        xml = body.get("label_config")
        if xml is None:
            xml = self._schemas.get(str(body.get("project")))
        if not isinstance(xml, str) or not xml.strip():
            raise InvalidRequest("'label_config' is missing and /setup did not provide the project's schema")
        return parse_label_config(xml)

    @staticmethod
    def _prediction(result: list[dict], model_version: str) -> dict:
        score = sum(region["score"] for region in result) / len(result) if result else 0.0
        return {"result": result, "score": round(score, 4), "model_version": model_version}
