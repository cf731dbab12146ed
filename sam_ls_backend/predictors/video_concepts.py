"""SAM 3 concepts through a video (`Sam3VideoModel`): noun phrases in, every instance of each found and tracked,
one object id per instance, with its detection score on every frame it is shown.

The model is driven as transformers documents it: a `Sam3VideoProcessor` session, the phrases added with
`add_text_prompt`, propagation from the first frame, each frame's output through `postprocess_outputs`. As
for box tracks (predictors/video.py), the session's frames are a lazy mapping decoded on demand
(`FrameSource`) and outputs older than the tracker reads back are dropped.

SAM 3 holds each frame's answer back for `hotstart_delay` frames (15 in the published config) while it
decides which new instances are real. `propagate_in_video_iterator` keeps that buffer in the generator and
yields nothing until 16 frames are processed, so a time budget checked between its outputs could not stop a
request before then (minutes on a CPU). `advance` therefore takes the iterator's steps itself, one frame at a
time: the model on the frame, the output into the buffer, the buffer's release rule (the oldest output once
the buffer holds `hotstart_delay`, all of them after the last frame), each released output post-processed
at once, in the same order as the iterator's consumer does. The buffer is kept in the track between requests,
so a request that stops at the time budget after any frame loses nothing and the next one goes on.

The detector's thresholds are the model folder's (`score_threshold_detection`, `new_det_thresh` in its
config.json), as transformers applies them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sam_ls_backend.compute_thread import on_compute_thread
from sam_ls_backend.media.video import VideoFile
from sam_ls_backend.predictors.files import ModelFile
from sam_ls_backend.predictors.transformers_folder import load_pretrained
from sam_ls_backend.predictors.video import (
    KEEP_FRAMES,
    FrameSource,
    Observer,
    PixelBox,
    forget_old_outputs,
    mask_box,
    tensor_bytes,
)
from sam_ls_backend.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ConceptTrack:
    """One SAM 3 video session between requests: the phrases, the instances found so far and their boxes."""

    session: Any
    frames: FrameSource
    phrases: tuple[str, ...]
    next_frame: int = 0  # the next frame the model runs on
    held: list[Any] = field(default_factory=list)  # outputs held back for SAM 3's hotstart delay, oldest first
    boxes: dict[int, dict[int, PixelBox | None]] = field(default_factory=dict)  # object id -> frame -> box
    scores: dict[int, list[float]] = field(default_factory=dict)  # object id -> detection score per frame shown
    phrase_of: dict[int, str] = field(default_factory=dict)  # object id -> the phrase that found it
    answered_frames: int = 0  # frames whose output has been released (in order, from frame 0)
    done: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def nbytes(self) -> int:
        """Bytes the track holds (the session's tensors, boxes), for the state cache's bound."""
        session = self.session
        held = tensor_bytes(session.output_dict_per_obj) + tensor_bytes(session.mask_inputs_per_obj)
        held += tensor_bytes(session.cache._vision_features) + tensor_bytes(session.prompt_embeddings)
        return held + sum(64 * len(frames) for frames in self.boxes.values())


class ConceptVideoTracker:
    """`Sam3VideoModel` and `Sam3VideoProcessor`; `begin` prompts a video with phrases, `advance` runs it."""

    model_type = "sam3"

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor
        config = model.tracker_model.config
        # Memories and object pointers of the last frames the tracker reads back; older non-prompted outputs
        # are never read again (the detector and its heuristics look at the current frame only).
        self.look_back = max(config.num_maskmem, config.max_object_pointers_in_encoder) + KEEP_FRAMES

    @on_compute_thread
    def begin(self, video: VideoFile, phrases: tuple[str, ...]) -> ConceptTrack:
        """A session over the whole of `video` looking for every phrase; nothing runs until `advance`."""
        import torch

        frames = FrameSource(self.processor, len(video))
        session = self.processor.init_video_session(inference_device=self.model.device, dtype=torch.float32)
        session.video_height, session.video_width = video.height, video.width
        session.processed_frames = frames
        self.processor.add_text_prompt(inference_session=session, text=list(phrases))
        return ConceptTrack(session, frames, phrases)

    @on_compute_thread
    def advance(self, track: ConceptTrack, video: VideoFile, deadline: float, observe: Observer | None = None) -> None:
        """Run the model on until the video's end or `deadline` (time.monotonic(), checked after each frame; at
        least one frame is run). Every instance shown on a released frame gets its mask's box there; one shown
        before and not now gets None (lost). `observe` is shown each released frame's object ids, objects×H×W
        bool masks and scores."""
        if track.done:
            return
        track.frames.video = video
        last = len(track.frames) - 1
        delay = self.model.hotstart_delay
        try:
            while track.next_frame <= last:
                frame = track.next_frame
                output = self.model(inference_session=track.session, frame_idx=frame)
                track.next_frame += 1
                if delay > 0:  # propagate_in_video_iterator's hotstart buffer
                    track.held.append(output)
                    track.session.hotstart_removed_obj_ids.update(output.removed_obj_ids)
                    if frame == last:
                        released, track.held = track.held, []
                    elif len(track.held) >= delay:
                        released, track.held = track.held[:1], track.held[1:]
                    else:
                        released = []
                else:
                    released = [output]
                for ready in released:
                    self._take(track, ready, observe)
                if time.monotonic() >= deadline:
                    return
        finally:
            track.frames.video = None

    def _take(self, track: ConceptTrack, output: Any, observe: Observer | None) -> None:
        """One frame's output, post-processed as transformers does, into the track's boxes and scores."""
        found = self.processor.postprocess_outputs(track.session, output)
        frame = output.frame_idx
        object_ids = [int(object_id) for object_id in found["object_ids"].tolist()]
        masks = found["masks"]  # objects×H×W bool, at the video's size
        for phrase, ids in found["prompt_to_obj_ids"].items():
            for object_id in ids:
                track.phrase_of.setdefault(int(object_id), phrase)
        for position, object_id in enumerate(object_ids):
            track.boxes.setdefault(object_id, {})[frame] = mask_box(masks[position])
            track.scores.setdefault(object_id, []).append(float(found["scores"][position]))
        for object_id, boxes in track.boxes.items():
            if object_id not in object_ids:
                boxes[frame] = None
        track.answered_frames = frame + 1
        track.done = track.answered_frames >= len(track.frames)  # frames come out in order, the last one last
        forget_old_outputs(track.session, frame, self.look_back)
        if observe is not None:
            observe(frame, object_ids, masks, found["scores"])



def load_concept_video_tracker(settings: Settings, folder: ModelFile, detector: Any = None) -> ConceptVideoTracker:
    """`Sam3VideoModel` from SAM3_MODEL_DIR (the hub's facebook/sam3 folder is a sam3_video folder). Its
    detector is SAM 3's image detector (`Sam3Model`); given the one already loaded (`detector`, a
    predictors.sam3.ConceptSegmenter) with equal weights, that one is used instead of a second copy."""
    import torch

    model, processor = load_pretrained(settings, folder, "Sam3VideoModel", "Sam3VideoProcessor")
    if detector is not None:
        mine, theirs = model.detector_model.state_dict(), detector.model.state_dict()
        if mine.keys() == theirs.keys() and all(torch.equal(mine[name], theirs[name]) for name in mine):
            model.detector_model = detector.model
        else:
            log.info("SAM 3's video model has a detector of its own: both are kept")
    return ConceptVideoTracker(model, processor)
