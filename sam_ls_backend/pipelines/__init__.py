"""The kinds of task work `SamBackend` hands a request to, in the order they take regions.

Adding a kind is one module with a pipeline class (see base.py) and one line here: video takes the
VideoRectangles (and answers tasks of videos without context); SAM 3 concepts take typed text and rectangles
when the model has a concept detector; clicks take the keypoints and rectangles left. A task without regions
is offered to each pipeline's `prelabel` in this order: video tasks' drawn boxes are tracked, then under
PREANNOTATE=concepts SAM 3 finds and tracks the labels' concepts on video tasks without boxes and on images,
and automatic mask generation answers under PREANNOTATE=everything.
"""

from __future__ import annotations

from sam_ls_backend.pipelines.base import PipelineFactory
from sam_ls_backend.pipelines.clicks import ClickPipeline
from sam_ls_backend.pipelines.concepts import ConceptPipeline
from sam_ls_backend.pipelines.everything import EverythingPipeline
from sam_ls_backend.pipelines.video import VideoPipeline
from sam_ls_backend.pipelines.video_concepts import VideoConceptPipeline

PIPELINES: tuple[PipelineFactory, ...] = (VideoPipeline.build, VideoConceptPipeline.build, ConceptPipeline.build,
                                          EverythingPipeline.build, ClickPipeline)
