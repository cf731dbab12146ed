"""/predict bodies of video tasks shaped like Label Studio 1.23.2's (measured in its page, see
shared design notes): a VideoRectangle's `value` holds `framesCount`, `duration`, `labels` and the keyframe
`sequence` (frame 1-based, box in percent, `enabled`, `rotation`, `time` = frame / the tag's framerate)."""

from __future__ import annotations

import copy

FRAMERATE = 25
VIDEO_CONFIG = ('<View><Labels name="videoLabels" toName="video" allowEmpty="true">'
                '<Label value="Car"/><Label value="Person"/></Labels>'
                f'<Video name="video" value="$video" framerate="{FRAMERATE}"/>'
                '<VideoRectangle name="box" toName="video"/></View>')


def keyframe(frame: int, box: tuple, width: int, height: int, enabled: bool = True) -> dict:
    """A keyframe on 1-based `frame` for a pixel box (x0, y0, x1, y1) of a width×height video."""
    x0, y0, x1, y1 = box
    return {"frame": frame, "enabled": enabled, "rotation": 0, "x": x0 * 100 / width, "y": y0 * 100 / height,
            "width": (x1 - x0) * 100 / width, "height": (y1 - y0) * 100 / height, "time": frame / FRAMERATE}


def video_region(region_id: str, keyframes: list[dict], frames_count: int, label: str | None = "Car") -> dict:
    value = {"framesCount": frames_count, "duration": frames_count / FRAMERATE, "sequence": keyframes}
    if label:
        value["labels"] = [label]
    return {"id": region_id, "type": "videorectangle", "from_name": "box", "to_name": "video", "origin": "manual",
            "value": value}


def video_body(url: str, regions: list[dict] | None, task_id: int = 1, annotations: list[dict] | None = None,
               drafts: list[dict] | None = None) -> dict:
    """A /predict body: the label click's (`regions`, the clicked box first) or Retrieve predictions' (None)."""
    task = {"id": task_id, "data": {"video": url}, "annotations": copy.deepcopy(annotations or []),
            "drafts": copy.deepcopy(drafts or []), "predictions": [], "meta": {}, "project": 1}
    return {"tasks": [task], "project": "1.1795303561", "label_config": VIDEO_CONFIG,
            "params": {"login": None, "password": None,
                       "context": None if regions is None else {"result": copy.deepcopy(regions)}}}


def with_sequences(regions: list[dict], results: list[dict]) -> list[dict]:
    """The regions as Label Studio holds them after applying an answer: each answered id's keyframes replaced."""
    answered = {result["id"]: result["value"]["sequence"] for result in results}
    updated = copy.deepcopy(regions)
    for region in updated:
        if region["id"] in answered:
            region["value"]["sequence"] = copy.deepcopy(answered[region["id"]])
    return updated
