"""SAM 3 concepts: a typed noun phrase and example rectangles find every instance on the task's image.

The image's features come from SAM 3's own encoder (cached like SAM's embeddings). The detector's answer is
kept for each (image, concept, boxes), so a new threshold typed for the same concept runs no model. A concept
typed on a task is remembered for it: later rectangles and thresholds on that task refine that concept.

Under PREANNOTATE=concepts a task sent without regions is labelled with no one typing: every label of the
image's output controls is a concept (its `<Label concept="...">` phrase when it has one), found on one encoder
run of the image; each instance above the threshold is a region with that label and its score.

Instance regions carry ids made from (project, task, image, concept, rank of the instance): a new threshold
for the same concept answers the same ids, so Label Studio's page replaces those regions instead of adding
them again.
"""

from __future__ import annotations

import hashlib
import time
from functools import partial
from typing import TYPE_CHECKING

from sam_ls_backend.embeddings.lookup import ImageEmbeddings
from sam_ls_backend.errors import InvalidRequest
from sam_ls_backend.lru import LRU
from sam_ls_backend.metrics import DECODER_SECONDS
from sam_ls_backend.outputs import images_with_outputs, output_controls, to_results
from sam_ls_backend.pipelines.base import Backend, PredictStats, Request, image_url
from sam_ls_backend.pipelines.clicks import with_object_id
from sam_ls_backend.predictors.base import Embedding
from sam_ls_backend.protocol.concepts import ConceptPrompt, concept_prompts
from sam_ls_backend.protocol.label_config import Control
from sam_ls_backend.protocol.polygons import remove_small_regions
from sam_ls_backend.protocol.regions import Regions

if TYPE_CHECKING:
    from sam_ls_backend.predictors.sam3 import ConceptSegmenter, Detections

DETECTIONS_BYTES = 256 * 2**20  # SAM 3 answers kept so that a new threshold needs no model run
REMEMBERED_CONCEPTS = 4096
DEFAULT_CONCEPT_THRESHOLD = 0.5  # SAM 3's own default confidence, used while SCORE_THRESHOLD is 0


class ConceptPipeline:
    """Typed text and rectangles to one region per instance of the concept, each with its score."""

    def __init__(self, backend: Backend, segmenter: ConceptSegmenter, embeddings: ImageEmbeddings) -> None:
        self.settings = backend.settings
        self.polygon_options = backend.polygon_options
        self.segmenter = segmenter
        self.embeddings = embeddings
        self.detections: LRU[str, Detections] = LRU(DETECTIONS_BYTES, cost=lambda found: found.nbytes)
        # (project, task, image) -> the concept and threshold typed there last
        self.typed: LRU[tuple[str, str, str], tuple[str, float | None]] = LRU(REMEMBERED_CONCEPTS)

    @classmethod
    def build(cls, backend: Backend) -> ConceptPipeline | None:
        """The pipeline, when the backend has SAM 3's concept detector."""
        if backend.concepts is None or backend.concept_embeddings is None:
            return None
        return cls(backend, backend.concepts, backend.concept_embeddings)

    def take(self, regions: Regions, stats: PredictStats) -> tuple[list[ConceptPrompt] | None, Regions]:
        concepts = concept_prompts(regions)
        stats.boxes += sum(len(concept.boxes) for concept in concepts)
        return concepts or None, Regions(keypoints=regions.keypoints)

    def prelabel(self, request: Request, task: dict, stats: PredictStats) -> list[dict] | None:
        """PREANNOTATE=concepts: every instance of every label's concept on the task's images; else passed on."""
        if self.settings.preannotate != "concepts":
            return None
        threshold = self.settings.score_threshold or DEFAULT_CONCEPT_THRESHOLD
        results = []
        for to_name in sorted(images_with_outputs(request.config)):
            controls = output_controls(request.config, to_name, self.settings.result_type)
            url = image_url(task, request.config.image_field(to_name))
            task_id = task.get("id")
            embedding, source = self.embeddings.get(url, task_id if isinstance(task_id, int) else None)
            stats.encoder_runs += source == "encoder"
            for label, phrase in label_concepts([control for _, control in controls]):
                detections = self._detections(url, embedding, phrase, [], (), stats)
                for instance in self.segmenter.instances(detections, threshold):
                    mask = remove_small_regions(instance.mask, self.settings.min_area)
                    results += to_results(mask, label, controls, to_name, instance.score, self.polygon_options)
        return results

    def answer(self, request: Request, task: dict, concepts: list[ConceptPrompt], stats: PredictStats) -> list[dict]:
        """One region per instance of each image's concept, above the confidence threshold."""
        results = []
        for concept in concepts:
            if concept.to_name in request.config.video_fields:
                continue  # a concept typed for a video: pipelines/video_concepts.py answers it
            text, threshold = self._concept_text(request.project, task, concept)
            controls = output_controls(request.config, concept.to_name, self.settings.result_type)
            url = image_url(task, request.config.image_field(concept.to_name))
            task_id = task.get("id")
            embedding, _ = self.embeddings.get(url, task_id if isinstance(task_id, int) else None)
            height, width = embedding.original_size
            scale = (width / 100.0, height / 100.0, width / 100.0, height / 100.0)
            boxes = [tuple(v * s for v, s in zip(box, scale)) for box in concept.boxes]
            detections = self._detections(url, embedding, text, boxes, tuple(concept.box_labels), stats)
            label = concept_label(text, concept.label, [control for _, control in controls])
            for rank, instance in enumerate(self.segmenter.instances(detections, threshold)):
                mask = remove_small_regions(instance.mask, self.settings.min_area)
                regions = to_results(mask, label, controls, concept.to_name, instance.score, self.polygon_options)
                where = (request.project, task_id, concept.to_name, text, rank)
                results += with_object_id(regions, instance_id(*where))
        return results

    def _detections(self, url: str, embedding: Embedding, text: str, boxes: list[tuple[float, ...]],
                    box_labels: tuple[int, ...], stats: PredictStats) -> Detections:
        """SAM 3's candidates for `text` and `boxes` (pixels) on the image, from the cache when asked before."""
        key = repr((self.embeddings.digest(url), text, boxes, box_labels))
        runs: list[float] = []
        detections = self.detections.get_or_compute(
            key, partial(self._detect, runs, embedding, text, boxes, list(box_labels)))
        for seconds in runs:
            DECODER_SECONDS.observe(seconds)
        stats.concepts += 1
        stats.detector_runs += len(runs)
        return detections

    def _detect(self, runs: list[float], embedding: Embedding, text: str, boxes: list[tuple[float, ...]],
                box_labels: list[int]) -> Detections:
        """SAM 3's detector on the image, timed into `runs` (a cache hit runs nothing)."""
        started = time.perf_counter()
        detections = self.segmenter.detect(embedding, text, boxes, box_labels)
        runs.append(time.perf_counter() - started)
        return detections

    def _concept_text(self, project: str, task: dict, concept: ConceptPrompt) -> tuple[str, float]:
        """The concept and threshold for this request: typed now, else typed earlier on the task, else the label."""
        key = (project, str(task.get("id")), concept.to_name)
        text, threshold = self.typed.get(key) or (None, None)
        if concept.text:  # typed now: its threshold is the one typed after it, if any
            text, threshold = concept.text, concept.threshold
        else:
            text = text or concept.label
            threshold = concept.threshold if concept.threshold is not None else threshold
        if text:
            self.typed.put(key, (text, threshold))
        if not text:
            raise InvalidRequest(f"no concept for image '{concept.to_name}': type one in the TextArea "
                                 "or draw a labelled rectangle")
        if threshold is None:
            threshold = self.settings.score_threshold or DEFAULT_CONCEPT_THRESHOLD
        return text, threshold


def instance_id(project: str, task_id: object, to_name: str, concept: str, rank: int) -> str:
    """The region id of the `rank`-th instance (best first) of `concept` on a task's image: stable across
    thresholds, so a new threshold replaces the regions it keeps."""
    digest = hashlib.sha1(repr((project, str(task_id), to_name, concept.lower(), rank)).encode()).hexdigest()
    return digest[:12]


def concept_label(text: str, rectangle_label: str | None, controls: list[Control]) -> str | None:
    """The label to paint instances of `text` with: the rectangle's, else a control label the text names."""
    if rectangle_label:
        return rectangle_label
    labels = [label for control in controls for label in control.labels]
    words = text.lower().split()
    for candidate in ([label for label in labels if label.lower() == text.lower()]
                      + [label for label in labels if label.lower() in words]):
        return candidate
    return labels[0] if labels else None


def label_concepts(controls: list[Control]) -> list[tuple[str, str]]:
    """(label, SAM 3 phrase) for every distinct label of the controls, in config order."""
    found: dict[str, str] = {}
    for control in controls:
        for label in control.labels:
            if label and label not in found:
                found[label] = control.concept_of(label)
    return list(found.items())
