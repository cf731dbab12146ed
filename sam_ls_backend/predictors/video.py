"""SAM 2.1's and SAM 3's video trackers (`Sam2VideoModel`, `Sam3TrackerVideoModel`): box prompts on some frames,
every object's mask on every frame after, through transformers' own inference session.

The session is transformers' own, driven through its own calls (`add_inputs_to_inference_session`, the model
on each prompted frame, `propagate_in_video_iterator`), so masks are the ones its video API gives for the same
prompts. Two things differ, neither changing a mask: the session's frames are a lazy mapping that decodes and
preprocesses a frame when the model asks for it (`FrameSource`), and outputs older than the model can look back
to are dropped as tracking goes on (`KEEP_FRAMES`), so memory stays flat over a long video. A `Track` is the
session between requests: the next request continues it where the last one stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sam_ls_backend.compute_thread import on_compute_thread
from sam_ls_backend.media.video import VideoFile
from sam_ls_backend.predictors.files import ModelFile
from sam_ls_backend.predictors.transformers_folder import load_pretrained
from sam_ls_backend.settings import Settings

log = logging.getLogger(__name__)

PixelBox = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, x1 and y1 exclusive
KEEP_FRAMES = 1  # beyond what the model reads back (see `forget_old_outputs`)
# Shown every tracked frame: (frame index, object ids, objects×H×W bool masks, object-score logits).
Observer = Callable[[int, list[int], Any, Any], None]


class FrameSource:
    """The session's `processed_frames`: frame index -> the model's 3×S×S float32 input, decoded on demand.

    `len()` is the video's frame count, as for a session given the whole video. The last frame asked for is
    kept, since the model asks for a frame once for its features and the memory encoder reads them cached.
    """

    def __init__(self, processor: Any, frames: int) -> None:
        self.processor = processor
        self.frames = frames
        self.video: VideoFile | None = None  # the request's open file; None between requests
        self._last: tuple[int, Any] | None = None

    def __len__(self) -> int:
        return self.frames

    def __getitem__(self, index: int) -> Any:
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        if self.video is None:
            raise RuntimeError("the track's video is not open")
        rgb = self.video.frame(index)  # H×W×3 uint8
        pixels = self.processor.video_processor(videos=[rgb[None]], return_tensors="pt").pixel_values_videos[0][0]
        self._last = (index, pixels)
        return pixels

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and 0 <= index < self.frames


@dataclass
class Track:
    """One tracking session between requests: the objects, their boxes so far, and where to go on from."""

    session: Any
    frames: FrameSource
    object_ids: list[int]
    next_frame: int  # 0-based index of the next frame to track
    end_frame: int  # exclusive
    boxes: dict[int, dict[int, PixelBox | None]]  # object id -> frame index -> box, or None where lost
    scores: dict[int, list[float]]  # object id -> object-score probabilities of its tracked frames
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> bool:
        return self.next_frame >= self.end_frame

    def nbytes(self) -> int:
        """Bytes the track holds (tensors of the session, boxes), for the state cache's bound."""
        held = tensor_bytes(self.session.output_dict_per_obj) + tensor_bytes(self.session.point_inputs_per_obj)
        held += tensor_bytes(self.session.mask_inputs_per_obj) + tensor_bytes(self.session.cache._vision_features)
        return held + sum(64 * len(frames) for frames in self.boxes.values())


class VideoTracker:
    """A promptable video model and its processor; `begin` prompts a track, `advance` runs it forward."""

    def __init__(self, model: Any, processor: Any, model_type: str) -> None:
        self.model = model
        self.processor = processor
        self.model_type = model_type
        config = model.config
        # Memories of the last num_maskmem - 1 frames and object pointers of the last
        # max_object_pointers_in_encoder - 1 frames are read; older non-prompted outputs are never used again.
        self.look_back = max(config.num_maskmem, config.max_object_pointers_in_encoder) + KEEP_FRAMES

    @on_compute_thread
    def begin(self, video: VideoFile, prompts: dict[int, list[tuple[int, PixelBox]]], end_frame: int) -> Track:
        """A track of the objects prompted on `prompts` (frame index -> (object id, box in pixels)), each
        prompted frame run once; tracking starts at the first prompted frame and stops before `end_frame`."""
        import torch

        frames = FrameSource(self.processor, len(video))
        frames.video = video
        session = self.processor.init_video_session(inference_device=self.model.device, dtype=torch.float32)
        session.video_height, session.video_width = video.height, video.width
        session.processed_frames = frames
        object_ids = sorted({object_id for prompted in prompts.values() for object_id, _ in prompted})
        with torch.inference_mode():
            for frame in sorted(prompts):
                self.processor.add_inputs_to_inference_session(
                    session, frame_idx=frame, obj_ids=[object_id for object_id, _ in prompts[frame]],
                    input_boxes=[[list(box) for _, box in prompts[frame]]])
                self.model(inference_session=session, frame_idx=frame)
        return Track(session, frames, object_ids, min(prompts), end_frame,
                     {object_id: {} for object_id in object_ids}, {object_id: [] for object_id in object_ids})

    @on_compute_thread
    def advance(self, track: Track, video: VideoFile, deadline: float, observe: Observer | None = None) -> None:
        """Track forward from `track.next_frame` until its end or `deadline` (time.monotonic(); at least one
        frame is tracked); the boxes of every object on every frame go into `track.boxes`. `observe` is shown
        each frame's masks (objects×H×W bool tensor) and object-score logits."""
        import torch

        if track.done:
            return
        track.frames.video = video
        height, width = video.height, video.width
        try:
            outputs = self.model.propagate_in_video_iterator(
                track.session, start_frame_idx=track.next_frame,
                max_frame_num_to_track=track.end_frame - track.next_frame - 1)
            for output in outputs:
                masks = self.processor.post_process_masks([output.pred_masks], original_sizes=[[height, width]],
                                                          binarize=True)[0][:, 0]  # objects×H×W bool
                probabilities = torch.sigmoid(output.object_score_logits.float().reshape(-1)).tolist()
                for position, object_id in enumerate(output.object_ids):
                    track.boxes[object_id][output.frame_idx] = mask_box(masks[position])
                    track.scores[object_id].append(probabilities[position])
                track.next_frame = output.frame_idx + 1
                forget_old_outputs(track.session, output.frame_idx, self.look_back)
                if observe is not None:
                    observe(output.frame_idx, list(output.object_ids), masks, output.object_score_logits)
                if time.monotonic() >= deadline:
                    break
        finally:
            track.frames.video = None



def mask_box(mask: Any) -> PixelBox | None:
    """The bounding box (x0, y0, x1, y1; x1, y1 exclusive, pixels) of an H×W bool mask, None when empty."""
    import torch

    rows = torch.nonzero(mask.any(dim=1)).flatten()
    if rows.numel() == 0:
        return None
    columns = torch.nonzero(mask.any(dim=0)).flatten()
    return (float(columns[0]), float(rows[0]), float(columns[-1] + 1), float(rows[-1] + 1))


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor in a nest of dicts, lists and tuples."""
    if hasattr(value, "element_size") and hasattr(value, "nelement"):
        return int(value.element_size() * value.nelement())
    if isinstance(value, dict):
        return sum(tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(item) for item in value)
    return 0


def load_video_tracker(settings: Settings, folder: ModelFile, model_class: str, processor_class: str,
                       model_type: str) -> VideoTracker:
    """A video tracker (`transformers.<model_class>`) from the local model folder (takes seconds)."""
    model, processor = load_pretrained(settings, folder, model_class, processor_class)
    return VideoTracker(model, processor, model_type)


def forget_old_outputs(session: Any, frame: int, look_back: int) -> None:
    """Drop a tracking session's non-prompted outputs the model will not read again: those older than `look_back`
    frames before `frame`, the frame processed last."""
    oldest = frame - look_back
    for outputs in session.output_dict_per_obj.values():
        tracked = outputs["non_cond_frame_outputs"]
        for old in [index for index in tracked if index < oldest]:
            del tracked[old]
