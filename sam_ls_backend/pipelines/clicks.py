"""Clicks and rectangles: SAM segments one object per prompt, on the embedding of the task's image.

The objects of one image are decoded together. The refinement history (embeddings/refinement.py) says which
object each prompt is: a new one, or a remembered one it refines (the previous answer as `mask_input`, the
remembered clicks and box added); an object's result regions carry its object id (the first region exactly
that id, further ones `<id>_<n>`), so Label Studio's page replaces the object's region instead of adding
one. Masks below SCORE_THRESHOLD are dropped; negative rectangles are cut out; islands and holes under
MIN_AREA are removed.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from sam_ls_backend.embeddings.refinement import Draft, Planned
from sam_ls_backend.metrics import DECODER_SECONDS
from sam_ls_backend.outputs import output_controls, to_results
from sam_ls_backend.pipelines.base import Backend, PredictStats, Request, image_url
from sam_ls_backend.predictors.base import Embedding, MaskResult, decode_objects
from sam_ls_backend.protocol.polygons import remove_small_regions
from sam_ls_backend.protocol.prompts import Prompt, group_prompts
from sam_ls_backend.protocol.regions import Regions


class ClickPipeline:
    """Keypoints and rectangles to one mask per object."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.settings = backend.settings

    def take(self, regions: Regions, stats: PredictStats) -> tuple[list[Prompt] | None, Regions]:
        if not regions.keypoints and not regions.rectangles:
            return None, regions
        prompts = group_prompts(regions)
        stats.points += sum(len(prompt.points) for prompt in prompts)
        stats.boxes += sum(prompt.box is not None for prompt in prompts)
        return prompts, Regions(texts=regions.texts)

    def prelabel(self, request: Request, task: dict, stats: PredictStats) -> list[dict] | None:
        """Clicks need an annotator: a task without regions is passed on."""
        return None

    def answer(self, request: Request, task: dict, prompts: list[Prompt], stats: PredictStats) -> list[dict]:
        """Result regions for every prompt, the objects of each image decoded together on its embedding."""
        by_image: dict[str, list[Prompt]] = {}
        for prompt in prompts:
            by_image.setdefault(prompt.to_name, []).append(prompt)
        results = []
        for to_name, objects in by_image.items():
            controls = output_controls(request.config, to_name, self.settings.result_type)
            url = image_url(task, request.config.image_field(to_name))
            embedding = self._embedding(url, task.get("id"), stats)
            key = (request.project, str(task.get("id")), url, to_name)
            planned = self.backend.history.plan(key, objects, drafts_of(task))
            if not planned:
                continue
            answers = self._decode(embedding, planned, stats)
            self.backend.history.remember(key, objects, planned, answers)
            for plan, answer in zip(planned, answers):
                threshold = self.settings.score_threshold  # 0 is off: random weights even score below 0
                if threshold > 0 and answer.score < threshold:
                    stats.below_threshold += 1
                    continue
                prompt = plan.prompt
                mask = remove_small_regions(prompt.cut_negative_boxes(answer.mask), self.settings.min_area)
                regions = to_results(mask, prompt.label, controls, to_name, answer.score,
                                     self.backend.polygon_options)
                results += with_object_id(regions, plan.object_id)
        return results

    def _decode(self, embedding: Embedding, planned: list[Planned], stats: PredictStats) -> list[MaskResult]:
        """SAM's answers for the planned objects of one image, each from its `mask_input` when it has one."""
        predictor = self.backend.predictor
        mask_inputs = [plan.mask_input for plan in planned]
        if not hasattr(predictor, "predict_batch"):
            mask_inputs = [None] * len(planned)
        started = time.perf_counter()
        answers = decode_objects(predictor, embedding, [plan.prompt for plan in planned], mask_inputs)
        per_object = (time.perf_counter() - started) / len(planned)
        for _ in planned:
            DECODER_SECONDS.observe(per_object)
        stats.refined += sum(mask is not None for mask in mask_inputs)
        return answers

    def _embedding(self, url: str, task_id: Any, stats: PredictStats) -> Embedding:
        embedding, source = self.backend.embeddings.get(url, task_id if isinstance(task_id, int) else None)
        if source == "memory":
            stats.cache_hits += 1
        elif source == "shared":
            stats.shared_hits += 1
        else:
            stats.encoder_runs += 1
        return embedding


def with_object_id(regions: list[dict], object_id: str) -> list[dict]:
    """The regions of one object with ids derived from its object id: `<id>`, then `<id>_1`, `<id>_2`, ..."""
    for index, region in enumerate(regions):
        region["id"] = object_id if index == 0 else f"{object_id}_{index}"
    return regions


def drafts_of(task: dict) -> list[Draft]:
    """The task's drafts as sent by Label Studio (`tasks[i].drafts`): when each was saved and its region ids.

    Drafts are only a hint: one whose time or results cannot be read is left out.
    """
    drafts = task.get("drafts")
    found = []
    for draft in drafts if isinstance(drafts, list) else []:
        if not isinstance(draft, dict):
            continue
        stamp = draft.get("updated_at") or draft.get("created_at")
        try:
            saved_at = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
        result = draft.get("result")
        regions = [region for region in (result if isinstance(result, list) else []) if isinstance(region, dict)]
        ids = frozenset(str(region["id"]) for region in regions if region.get("id") is not None)
        smart = any(region.get("type") in ("keypointlabels", "rectanglelabels") for region in regions)
        found.append(Draft(saved_at, ids, smart))
    return found
