"""What a pipeline is: one kind of task work, handed the regions it answers by `SamBackend`.

A request's regions are read once (protocol/regions.py); each registered pipeline in turn `take`s the regions
it answers and leaves the rest to the next. Then, for every task of the request, each pipeline that took
something `answer`s with its result regions. A task without regions (opened by an annotator, or sent by
*Retrieve predictions*) is offered to each pipeline's `prelabel` in turn: the first list of regions answers
it; when every pipeline passes, the backend only warms the task's image. Counters for the request's log
line go to `PredictStats`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sam_ls_backend.embeddings.lookup import ImageEmbeddings
from sam_ls_backend.embeddings.refinement import RefinementHistory
from sam_ls_backend.errors import InvalidRequest
from sam_ls_backend.media.fetch import ImageSource
from sam_ls_backend.predictors.base import Predictor
from sam_ls_backend.protocol.label_config import LabelConfig
from sam_ls_backend.protocol.polygons import PolygonOptions
from sam_ls_backend.protocol.regions import Regions
from sam_ls_backend.settings import Settings


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


@dataclass(frozen=True)
class Request:
    """One /predict, checked: the project, its tasks and labeling config."""

    project: str
    tasks: list[dict]
    config: LabelConfig


class Pipeline(Protocol):
    """One kind of task work, built once per backend."""

    def take(self, regions: Regions, stats: PredictStats) -> tuple[Any, Regions]:
        """The prompts this pipeline answers from `regions` (None when it answers none), and the regions left."""
        ...

    def answer(self, request: Request, task: dict, prompts: Any, stats: PredictStats) -> list[dict]:
        """The result regions of `task` for the prompts `take` returned."""
        ...

    def prelabel(self, request: Request, task: dict, stats: PredictStats) -> list[dict] | None:
        """The result regions of a task sent without regions, or None to pass it on."""
        ...


class Backend(Protocol):
    """What pipelines use of the backend (`SamBackend`): its settings, model and caches."""

    settings: Settings
    predictor: Predictor
    embeddings: ImageEmbeddings
    history: RefinementHistory
    polygon_options: PolygonOptions
    concepts: Any  # SAM 3's ConceptSegmenter, else None
    concept_embeddings: ImageEmbeddings | None
    images: ImageSource  # downloads task media the way Label Studio serves them
    video_loader: Callable[[], Any] | None  # loads the video tracker (predictors/video.py), else None
    video_concept_loader: Callable[[], Any] | None  # loads SAM 3's concept tracker (predictors/video_concepts.py)


class PipelineFactory(Protocol):
    """A registry entry: builds the pipeline for a backend, or None when the backend's model cannot serve it."""

    def __call__(self, backend: Backend) -> Pipeline | None: ...


def image_url(task: dict, field_name: str) -> str:
    """The URL in the task's data field `field_name`; InvalidRequest when there is none."""
    url = task["data"].get(field_name)
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequest(f"task {task.get('id')} has no image URL in data.{field_name}")
    return url.strip()
