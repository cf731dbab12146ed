"""SAM 3 concepts on video tasks, found and tracked through the video, one `videorectangle` per instance: every
label of the video's `Labels` control under PREANNOTATE=concepts for a task sent without objects, or a concept
typed in a TextArea pointed at the video (Label Studio's page sends its submission like an image's).

This is the video side of the image rule (pipelines/concepts.py): under PREANNOTATE=concepts a task sent
without regions (*Retrieve predictions*, a task opened) is labelled with no one typing; each label's phrase is
its `<Label concept="...">` attribute, else the label itself. A video task whose latest draft or annotation has
VideoRectangles is the box tracker's (pipelines/video.py, registered first), whatever PREANNOTATE says.

Tracking stops at VIDEO_TIME_BUDGET: the answer holds the frames SAM 3 has answered so far (an instance still
shown there ends on its last answered frame). The session is kept (VIDEO_STATE_MB, least recently used out)
under the task, video and phrases, so asking again for the same task (Retrieve predictions again, the task
opened again, the same concept submitted again) goes on where it stopped, and a finished video is answered
from what was tracked.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sam_ls_backend.errors import InvalidRequest
from sam_ls_backend.lru import LRU
from sam_ls_backend.media.video import VideoFile
from sam_ls_backend.media.video_download import downloaded_video
from sam_ls_backend.pipelines.base import Backend, PredictStats, Request
from sam_ls_backend.pipelines.concepts import concept_label, label_concepts
from sam_ls_backend.pipelines.video import VIDEO_CONTROL, latest_video_rectangles, video_url
from sam_ls_backend.protocol.concepts import concept_prompts
from sam_ls_backend.protocol.keyframes import keyframe_sequence
from sam_ls_backend.protocol.label_config import Control, LabelConfig
from sam_ls_backend.protocol.regions import Regions, TypedText

if TYPE_CHECKING:
    from sam_ls_backend.predictors.video_concepts import ConceptTrack, ConceptVideoTracker

LABELS_CONTROL = "labels"  # the <Labels> tag a video's VideoRectangles take their labels from


@dataclass
class ConceptEntry:
    """A concept track of one task's video, kept between requests."""

    track: ConceptTrack
    width: int
    height: int
    label_studio_frames: list[int]  # decoded frame index -> Label Studio's frame number (1-based)

    def nbytes(self) -> int:
        return self.track.nbytes() + 8 * len(self.label_studio_frames)


class VideoConceptPipeline:
    """SAM 3 concepts (the labels' on a video task without objects, or one typed for the video) to one tracked
    `videorectangle` per instance."""

    def __init__(self, backend: Backend, load_tracker: Callable[[], ConceptVideoTracker]) -> None:
        self.settings = backend.settings
        self.images = backend.images
        self._load_tracker = load_tracker
        self._tracker: ConceptVideoTracker | None = None
        self._loading = threading.Lock()
        self.tracks: LRU[tuple, ConceptEntry] = LRU(self.settings.video_state_mb * 2**20, cost=ConceptEntry.nbytes)

    @classmethod
    def build(cls, backend: Backend) -> VideoConceptPipeline | None:
        """The pipeline, when the model has SAM 3's concept tracker."""
        if backend.video_concept_loader is None:
            return None
        return cls(backend, backend.video_concept_loader)

    def take(self, regions: Regions, stats: PredictStats) -> tuple[list[TypedText] | None, Regions]:
        """Typed text, which `answer` keeps to the videos; the regions are left whole, since which TextAreas
        point at images (SAM 3's image concepts, taken next) is known only from the request's config."""
        return list(regions.texts) or None, regions

    def answer(self, request: Request, task: dict, texts: list[TypedText], stats: PredictStats) -> list[dict]:
        """Every instance of the concept typed last for each video (a typed threshold does not apply here: the
        model folder's thresholds do), labelled with the video's label the concept names, else its first."""
        deadline = time.monotonic() + self.settings.video_time_budget
        results = []
        typed = tuple(text for text in texts if text.to_name in request.config.video_fields)
        for concept in concept_prompts(Regions(texts=typed)):
            box = video_control(request.config, concept.to_name)
            if box is None:
                raise InvalidRequest(f"the labeling config has no <VideoRectangle toName=\"{concept.to_name}\"> to "
                                     "put the instances of a typed concept in")
            if not concept.text:
                raise InvalidRequest(f"no concept for video '{concept.to_name}': type a phrase in the TextArea")
            controls = [control for control in request.config.controls.get(concept.to_name, ())
                        if control.tag.lower() == LABELS_CONTROL]
            label = concept_label(concept.text, None, controls)
            results += self._answer_video(request, task, concept.to_name, box, [(label, concept.text)], deadline,
                                          stats)
        return results

    def prelabel(self, request: Request, task: dict, stats: PredictStats) -> list[dict] | None:
        """PREANNOTATE=concepts: every instance of every label's concept on each video of the task that has a
        VideoRectangle control and labels; passed on otherwise, or when the task has drawn boxes (the box
        tracker's)."""
        if self.settings.preannotate != "concepts":
            return None
        targets = []
        for to_name in sorted(request.config.video_fields):
            box, labels = video_control(request.config, to_name), video_labels(request.config, to_name)
            if box is not None and labels:
                targets.append((to_name, box, labels))
        if not targets or latest_video_rectangles(task):
            return None
        deadline = time.monotonic() + self.settings.video_time_budget
        results = []
        for to_name, box, labels in targets:
            results += self._answer_video(request, task, to_name, box, labels, deadline, stats)
        return results

    def _answer_video(self, request: Request, task: dict, to_name: str, box: Control,
                      labels: Sequence[tuple[str | None, str]], deadline: float, stats: PredictStats) -> list[dict]:
        """The instances of the phrases of `labels` ((label or None, phrase) pairs) on the task's video."""
        url = video_url(task, request.config, to_name)
        phrases = tuple(dict.fromkeys(phrase for _, phrase in labels))
        framerate = request.config.framerates[to_name]
        key = (request.project, str(task.get("id")), url, to_name, framerate, phrases)
        entry = self.tracks.get(key)
        if entry is None or not entry.track.done:
            tracker = self._tracker_now()
            task_id = task.get("id")
            with downloaded_video(self.images, self.settings, url, task_id if isinstance(task_id, int) else None) \
                    as path:
                video = VideoFile(path, self.settings.video_max_frames)
                try:
                    if entry is None:
                        entry = ConceptEntry(tracker.begin(video, phrases), video.width, video.height,
                                             video.label_studio_frames(framerate))
                    with entry.track.lock:
                        tracker.advance(entry.track, video, deadline)
                except BaseException:
                    self.tracks.pop(key)  # a session that failed part-way cannot be resumed
                    raise
                finally:
                    video.close()
            self.tracks.put(key, entry)  # stored again: its cost grew with the frames tracked
        stats.concepts += len(phrases)
        label_of: dict[str, str | None] = {}
        for label, phrase in labels:
            label_of.setdefault(phrase, label)
        return self._results(request, task, to_name, box.name, entry, label_of)

    def _results(self, request: Request, task: dict, to_name: str, from_name: str, entry: ConceptEntry,
                 label_of: dict[str, str | None]) -> list[dict]:
        """One videorectangle per instance found, in the order SAM 3 numbered them."""
        track = entry.track
        framerate = request.config.framerates[to_name]
        results = []
        for object_id in sorted(track.boxes):
            boxes = sorted(track.boxes[object_id].items())
            tracked = {entry.label_studio_frames[index]: found for index, found in boxes}
            sequence = keyframe_sequence((), tracked, entry.width, entry.height,
                                         self.settings.video_keyframe_tolerance, framerate)
            if not sequence:
                continue
            scores = track.scores[object_id]
            label = label_of[track.phrase_of[object_id]]
            value: dict[str, Any] = {"sequence": sequence, "framesCount": entry.label_studio_frames[-1]}
            if label:
                value["labels"] = [label]
            region_id = instance_region_id(request.project, task.get("id"), to_name, track.phrases, object_id)
            results.append({"id": region_id,
                            "from_name": from_name, "to_name": to_name, "type": VIDEO_CONTROL,
                            "origin": "prediction", "value": value, "score": round(sum(scores) / len(scores), 4)})
        return results

    def _tracker_now(self) -> ConceptVideoTracker:
        """SAM 3's concept tracker, loaded on first use."""
        with self._loading:
            if self._tracker is None:
                from sam_ls_backend.compute_thread import COMPUTE

                self._tracker = COMPUTE.run(self._load_tracker)
        return self._tracker


def video_control(config: LabelConfig, to_name: str) -> Control | None:
    """The first VideoRectangle control of video `to_name`, where instances are drawn."""
    return config.control(to_name, VIDEO_CONTROL)


def video_labels(config: LabelConfig, to_name: str) -> list[tuple[str, str]]:
    """(label, SAM 3 phrase) of every label of the video's `Labels` controls, in config order."""
    return label_concepts([control for control in config.controls.get(to_name, ())
                           if control.tag.lower() == LABELS_CONTROL])


def instance_region_id(project: str, task_id: object, to_name: str, phrases: tuple[str, ...], object_id: int) -> str:
    """The region id of SAM 3's instance `object_id` of a session looking for `phrases` on a task's video: the
    same each time it is answered."""
    key = (project, str(task_id), to_name, phrases, object_id)
    return hashlib.sha1(repr(key).encode()).hexdigest()[:12]
