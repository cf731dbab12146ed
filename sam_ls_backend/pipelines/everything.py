"""PREANNOTATE=everything: a task sent without regions gets every object SAM finds on its image.

Automatic mask generation (predictors/automatic.py) runs on the image's cached embedding, so a task later
clicked on needs no second encoder run. Each object becomes the regions of every output control on the image
(brush, polygons, boxes), labelled PREANNOTATE_LABEL or the control's first label, scored with SAM's
predicted IoU. Masks below SCORE_THRESHOLD are dropped.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sam_ls_backend.errors import ConfigError
from sam_ls_backend.metrics import DECODER_SECONDS
from sam_ls_backend.outputs import images_with_outputs, output_controls, to_results
from sam_ls_backend.pipelines.base import Backend, PredictStats, Request, image_url
from sam_ls_backend.protocol.regions import Regions
from sam_ls_backend.settings import Settings

if TYPE_CHECKING:
    from sam_ls_backend.predictors.automatic import GridDecoder, GridOptions


def grid_options(settings: Settings) -> GridOptions:
    """The generator's parameters from the EVERYTHING_* settings and MIN_AREA."""
    from sam_ls_backend.predictors.automatic import GridOptions  # torch: only under PREANNOTATE=everything

    return GridOptions(points_per_side=settings.everything_points_per_side,
                       points_per_batch=settings.everything_points_per_batch,
                       pred_iou_thresh=settings.everything_pred_iou,
                       stability_thresh=settings.everything_stability,
                       nms_thresh=settings.everything_nms,
                       min_area=settings.min_area)


class EverythingPipeline:
    """Tasks without regions to one region per object found by the point grid; takes no prompts."""

    def __init__(self, backend: Backend, decoder: GridDecoder) -> None:
        self.backend = backend
        self.settings = backend.settings
        self.decoder = decoder
        self.options = grid_options(backend.settings)

    @classmethod
    def build(cls, backend: Backend) -> EverythingPipeline | None:
        """The pipeline when PREANNOTATE=everything, its grid decoder loaded now (start-up); a model without one
        is refused here (ConfigError), as is SAM 3, whose pre-annotation is `concepts`."""
        if backend.settings.preannotate != "everything":
            return None
        predictor: Any = backend.predictor
        if not hasattr(predictor, "grid_decoder"):
            raise ConfigError(f"PREANNOTATE=everything needs MobileSAM, SAM or SAM 2.1; {backend.settings.sam_choice} "
                              "cannot generate masks over a point grid")
        return cls(backend, predictor.grid_decoder())

    def take(self, regions: Regions, stats: PredictStats) -> tuple[None, Regions]:
        """Clicks are for the other pipelines."""
        return None, regions

    def answer(self, request: Request, task: dict, prompts: Any, stats: PredictStats) -> list[dict]:
        return []

    def prelabel(self, request: Request, task: dict, stats: PredictStats) -> list[dict] | None:
        """Every object found on each image of the task that has output controls."""
        from sam_ls_backend.predictors.automatic import generate_masks

        results = []
        for to_name in sorted(images_with_outputs(request.config)):
            controls = output_controls(request.config, to_name, self.settings.result_type)
            url = image_url(task, request.config.image_field(to_name))
            task_id = task.get("id")
            embedding, source = self.backend.embeddings.get(url, task_id if isinstance(task_id, int) else None)
            stats.encoder_runs += source == "encoder"
            started = time.perf_counter()
            found = generate_masks(self.decoder, embedding, self.options)
            DECODER_SECONDS.observe(time.perf_counter() - started)
            label = self.settings.preannotate_label or None
            for item in found:
                if self.settings.score_threshold > 0 and item.score < self.settings.score_threshold:
                    stats.below_threshold += 1
                    continue
                results += to_results(item.mask, label, controls, to_name, item.score, self.backend.polygon_options)
        return results
