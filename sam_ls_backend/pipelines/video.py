"""Video tasks: every VideoRectangle of a request is an object, tracked through the task's video in one pass.

Label Studio sends VideoRectangles when the annotator selects a box and clicks its label (all boxes of that
label), and a task without context from *Retrieve predictions* (then the VideoRectangles of its latest draft or
annotation are tracked). Each enabled keyframe the annotator placed is a box prompt on its frame; tracking runs
from the first keyframe to the end of the video, within VIDEO_TIME_BUDGET per request. Each object is answered
with the same id and its complete keyframe list (protocol/keyframes.py), which Label Studio puts in place of the
region's keyframes.

Continuation: what a request tracked is kept (bounded by VIDEO_STATE_MB, least recently used out) under the
task, video and objects. The next request for the same objects sends back the keyframes answered before; those
are recognised, so unless the annotator added or changed a keyframe the track goes on where it stopped, and a
finished track is answered without downloading the video again.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sam_ls_backend.errors import InvalidRequest
from sam_ls_backend.lru import LRU
from sam_ls_backend.media.video import VideoFile
from sam_ls_backend.media.video_download import downloaded_video
from sam_ls_backend.pipelines.base import Backend, PredictStats, Request
from sam_ls_backend.predictors.registry import VIDEO_MODELS
from sam_ls_backend.protocol.keyframes import keyframe_sequence
from sam_ls_backend.protocol.label_config import LabelConfig
from sam_ls_backend.protocol.regions import (
    Regions,
    VideoKeyframe,
    VideoRectangle,
    box_in_pixels,
    read_video_rectangle,
)

if TYPE_CHECKING:
    from sam_ls_backend.predictors.video import PixelBox, Track, VideoTracker

VIDEO_CONTROL = "videorectangle"
MATCH_PERCENT = 1e-4  # a keyframe sent back equals one answered when every coordinate is this close


@dataclass
class TrackEntry:
    """What was tracked for one set of objects on one task's video, kept between requests."""

    prompts: dict[str, tuple[VideoKeyframe, ...]]  # region id -> its annotated keyframes
    track: Track
    width: int
    height: int
    label_studio_frames: list[int]  # decoded frame index -> Label Studio's frame number (1-based)
    answered: dict[str, list[dict]] = field(default_factory=dict)  # region id -> the keyframes last answered

    def nbytes(self) -> int:
        return self.track.nbytes() + 8 * len(self.label_studio_frames) + sum(
            256 * len(keyframes) for keyframes in self.answered.values())


@dataclass(frozen=True)
class VideoWork:
    """The VideoRectangles of one request, and when its tracking must stop (time.monotonic())."""

    objects: tuple[VideoRectangle, ...]
    deadline: float


class VideoPipeline:
    """VideoRectangles to their complete tracked keyframe lists."""

    def __init__(self, backend: Backend, load_tracker: Callable[[], VideoTracker] | None) -> None:
        self.images = backend.images
        self.settings = backend.settings
        self._load_tracker = load_tracker
        self._tracker: VideoTracker | None = None
        self._loading = threading.Lock()
        self.tracks: LRU[tuple, TrackEntry] = LRU(self.settings.video_state_mb * 2**20, cost=TrackEntry.nbytes)

    @classmethod
    def build(cls, backend: Backend) -> VideoPipeline:
        """Always built: a model without a tracker answers video requests with an error naming those that track."""
        return cls(backend, backend.video_loader)

    def take(self, regions: Regions, stats: PredictStats) -> tuple[VideoWork | None, Regions]:
        if not regions.video_rectangles:
            return None, regions
        stats.boxes += sum(len(region.keyframes) for region in regions.video_rectangles)
        work = VideoWork(regions.video_rectangles, time.monotonic() + self.settings.video_time_budget)
        return work, Regions(regions.keypoints, regions.rectangles, regions.texts)

    def prelabel(self, request: Request, task: dict, stats: PredictStats) -> list[dict] | None:
        """A video task opened or sent by *Retrieve predictions*: the VideoRectangles of its latest draft or
        annotation, tracked; passed on when the config has no Video or the task has no such regions."""
        if not request.config.video_fields:
            return None
        objects = latest_video_rectangles(task)
        if not objects:
            return None
        deadline = time.monotonic() + self.settings.video_time_budget
        return self.answer(request, task, VideoWork(tuple(objects), deadline), stats)

    def answer(self, request: Request, task: dict, work: VideoWork, stats: PredictStats) -> list[dict]:
        """One `videorectangle` per object of `work`, with its id and complete keyframe list."""
        by_video: dict[str, list[VideoRectangle]] = {}
        for region in work.objects:
            self._check_control(request, region)
            by_video.setdefault(region.to_name, []).append(region)
        results = []
        for to_name, objects in by_video.items():
            results += self._answer_video(request, task, to_name, objects, work.deadline, stats)
        return results

    def _answer_video(self, request: Request, task: dict, to_name: str, objects: list[VideoRectangle],
                      deadline: float, stats: PredictStats) -> list[dict]:
        url = video_url(task, request.config, to_name)
        framerate = request.config.framerates[to_name]
        key = (request.project, str(task.get("id")), url, to_name, tuple(sorted(region.id for region in objects)))
        entry = self.tracks.get(key)
        prompts = {region.id: annotated_keyframes(region, entry) for region in objects}
        if entry is not None and entry.prompts == prompts and entry.track.done:
            return self._results(entry, objects, framerate)
        tracker = self._tracker_or_error()
        task_id = task.get("id")
        with downloaded_video(self.images, self.settings, url, task_id if isinstance(task_id, int) else None) \
                as path:
            video = VideoFile(path, self.settings.video_max_frames)
            try:
                if entry is None or entry.prompts != prompts:
                    entry = self._begin(tracker, video, objects, prompts, framerate)
                with entry.track.lock:
                    tracker.advance(entry.track, video, deadline)
            finally:
                video.close()
        results = self._results(entry, objects, framerate)
        self.tracks.put(key, entry)  # stored again: its cost grew with the frames tracked
        return results

    def _begin(self, tracker: VideoTracker, video: VideoFile, objects: list[VideoRectangle],
               prompts: dict[str, tuple[VideoKeyframe, ...]], framerate: float) -> TrackEntry:
        """A new track of `objects`, prompted with each enabled annotated keyframe's box on its frame."""
        by_frame: dict[int, list[tuple[int, PixelBox]]] = {}
        for number, region in enumerate(objects, start=1):
            for keyframe in prompts[region.id]:
                index = video.index_of_label_studio_frame(keyframe.frame, framerate)
                if index is None:
                    raise InvalidRequest(f"region {region.id}: keyframe at frame {keyframe.frame} is past the end of "
                                         f"the video ({len(video)} frames at framerate {framerate:g})")
                box = box_in_pixels(keyframe, video.width, video.height) if keyframe.enabled else None
                if box is not None:
                    by_frame.setdefault(index, []).append((number, box))
        if not by_frame:
            raise InvalidRequest("no VideoRectangle of the request has an enabled keyframe with a box on the video")
        track = tracker.begin(video, by_frame, len(video))
        return TrackEntry(prompts, track, video.width, video.height, video.label_studio_frames(framerate))

    def _results(self, entry: TrackEntry, objects: list[VideoRectangle], framerate: float) -> list[dict]:
        track = entry.track
        results = []
        for number, region in enumerate(objects, start=1):
            boxes = track.boxes.get(number, {})
            tracked = {entry.label_studio_frames[index]: box for index, box in sorted(boxes.items())}
            sequence = keyframe_sequence(entry.prompts[region.id] or region.keyframes, tracked, entry.width,
                                         entry.height, self.settings.video_keyframe_tolerance, framerate)
            entry.answered[region.id] = sequence
            scores = track.scores.get(number) or [1.0]
            value: dict[str, Any] = {"sequence": sequence, "framesCount": region.frames_count
                                     or entry.label_studio_frames[-1]}
            if region.label:
                value["labels"] = [region.label]
            results.append({"id": region.id, "from_name": region.from_name, "to_name": region.to_name,
                            "type": VIDEO_CONTROL, "origin": "prediction", "value": value,
                            "score": round(sum(scores) / len(scores), 4)})
        return results

    def _check_control(self, request: Request, region: VideoRectangle) -> None:
        config = request.config
        if region.to_name not in config.video_fields:
            raise InvalidRequest(f"region {region.id}: the labeling config has no <Video name=\"{region.to_name}\"> "
                                 "with a $field value")
        controls = config.controls.get(region.to_name, ())
        if not any(control.name == region.from_name and control.tag.lower() == VIDEO_CONTROL for control in controls):
            raise InvalidRequest(f"region {region.id}: '{region.from_name}' is not a <VideoRectangle> of video "
                                 f"'{region.to_name}' in the labeling config")

    def _tracker_or_error(self) -> VideoTracker:
        """The model's video tracker, loaded on first use; a model without one is the client's error (422)."""
        if self._load_tracker is None:
            raise InvalidRequest(f"SAM_CHOICE={self.settings.sam_choice} does not track objects through videos; "
                                 f"use SAM_CHOICE={' or '.join(VIDEO_MODELS)}", status=422)
        with self._loading:
            if self._tracker is None:
                from sam_ls_backend.compute_thread import COMPUTE

                self._tracker = COMPUTE.run(self._load_tracker)
        return self._tracker


def video_url(task: dict, config: LabelConfig, to_name: str) -> str:
    """The URL in the task's data field of video `to_name`; InvalidRequest when there is none."""
    field_name = config.video_fields[to_name]
    url = task["data"].get(field_name)
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequest(f"task {task.get('id')} has no video URL in data.{field_name}")
    return url.strip()


def annotated_keyframes(region: VideoRectangle, entry: TrackEntry | None) -> tuple[VideoKeyframe, ...]:
    """The region's keyframes less those the backend answered before and the annotator left as they were; an
    annotated keyframe sent back as answered (its `enabled` turned off where the object was lost) is the
    annotator's original."""
    if entry is None or region.id not in entry.answered:
        return region.keyframes
    prompted = {keyframe.frame: keyframe for keyframe in entry.prompts.get(region.id, ())}
    answered = {keyframe["frame"]: keyframe for keyframe in entry.answered[region.id]}
    kept = []
    for keyframe in region.keyframes:
        unchanged = keyframe.frame in answered and _same(keyframe, answered[keyframe.frame])
        if keyframe.frame in prompted:
            kept.append(prompted[keyframe.frame] if unchanged else keyframe)
        elif not unchanged:
            kept.append(keyframe)
    return tuple(kept)


def _same(keyframe: VideoKeyframe, answered: dict) -> bool:
    return keyframe.enabled == answered.get("enabled", True) and all(
        math.isclose(getattr(keyframe, name), answered[name], abs_tol=MATCH_PERCENT)
        for name in ("x", "y", "width", "height"))


def latest_video_rectangles(task: dict) -> list[VideoRectangle]:
    """The VideoRectangles of the task's latest draft, else of its latest annotation not cancelled."""
    for kind in ("drafts", "annotations"):
        items = task.get(kind)
        if not isinstance(items, list):
            continue
        candidates = [item for item in items if isinstance(item, dict) and isinstance(item.get("result"), list)
                      and not item.get("was_cancelled")]
        if not candidates:
            continue
        latest = max(candidates, key=lambda item: (str(item.get("updated_at") or item.get("created_at") or ""),
                                                   item.get("id") if isinstance(item.get("id"), int) else 0))
        regions = [read_video_rectangle(region, f"tasks[].{kind}[id={latest.get('id')}].result[{index}]")
                   for index, region in enumerate(latest["result"])
                   if isinstance(region, dict) and region.get("type") == VIDEO_CONTROL]
        if regions:
            return regions
    return []
