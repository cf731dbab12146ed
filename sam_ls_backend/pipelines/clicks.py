"""Clicks and rectangles: SAM segments one object per prompt, on the embedding of the task's image.

The objects of one image are decoded together; an object whose prompts extend the previous request's on
the same image is refined from that answer (embeddings/refinement.py). Masks below SCORE_THRESHOLD are
dropped; negative rectangles are cut out; islands and holes under MIN_AREA are removed.
"""

from __future__ import annotations

import time
from typing import Any

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
            answers = self._decode(embedding, key, objects, stats)
            for prompt, answer in zip(objects, answers):
                threshold = self.settings.score_threshold  # 0 is off: random weights even score below 0
                if threshold > 0 and answer.score < threshold:
                    stats.below_threshold += 1
                    continue
                mask = remove_small_regions(prompt.cut_negative_boxes(answer.mask), self.settings.min_area)
                results += to_results(mask, prompt.label, controls, to_name, answer.score,
                                      self.backend.polygon_options)
        return results

    def _decode(self, embedding: Embedding, key: tuple, objects: list[Prompt], stats: PredictStats) -> list[MaskResult]:
        """SAM's answers for the objects of one image, refining the previous round's when these prompts extend it."""
        predictor, history = self.backend.predictor, self.backend.history
        refinable = hasattr(predictor, "predict_batch")
        mask_inputs = history.mask_inputs(key, objects) if refinable else [None] * len(objects)
        started = time.perf_counter()
        answers = decode_objects(predictor, embedding, objects, mask_inputs)
        per_object = (time.perf_counter() - started) / len(objects)
        for _ in objects:
            DECODER_SECONDS.observe(per_object)
        if refinable:
            history.remember(key, objects, mask_inputs, answers)
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
