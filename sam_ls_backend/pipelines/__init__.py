"""The kinds of task work `SamBackend` hands a request to, in the order they take regions.

Adding a kind is one module with a pipeline class (see base.py) and one line here: SAM 3 concepts take
typed text and rectangles first when the model has a concept detector; clicks take the keypoints and
rectangles left. A task without regions is offered to each pipeline's `prelabel`: SAM 3 concepts answer it
under PREANNOTATE=concepts, automatic mask generation under PREANNOTATE=everything.
"""

from __future__ import annotations

from sam_ls_backend.pipelines.base import PipelineFactory
from sam_ls_backend.pipelines.clicks import ClickPipeline
from sam_ls_backend.pipelines.concepts import ConceptPipeline
from sam_ls_backend.pipelines.everything import EverythingPipeline

PIPELINES: tuple[PipelineFactory, ...] = (ConceptPipeline.build, EverythingPipeline.build, ClickPipeline)
