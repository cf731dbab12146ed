"""What transformers' own video API answers for given box prompts, run the way its documentation shows: the
whole video given to the processor's session, prompts added frame by frame, then propagation from the first
prompted frame. The masks the backend's tracker gives must equal these."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def oracle_masks(folder: Path, frames: np.ndarray, prompts: dict[int, list[tuple[int, tuple]]],
                 model_class: str = "Sam2VideoModel", processor_class: str = "Sam2VideoProcessor"
                 ) -> dict[int, tuple[list[int], np.ndarray, np.ndarray]]:
    """0-based frame -> (object ids, objects×H×W bool masks, object-score logits) from the first prompted frame
    on; `prompts`: 0-based frame -> [(object id, (x0, y0, x1, y1) pixels)]."""
    import transformers

    model = getattr(transformers, model_class).from_pretrained(folder, local_files_only=True).eval()
    processor = getattr(transformers, processor_class).from_pretrained(folder, local_files_only=True)
    height, width = frames.shape[1:3]
    session = processor.init_video_session(video=list(frames), inference_device="cpu", dtype=torch.float32)
    answers = {}
    with torch.inference_mode():
        for frame in sorted(prompts):
            processor.add_inputs_to_inference_session(session, frame_idx=frame,
                                                      obj_ids=[object_id for object_id, _ in prompts[frame]],
                                                      input_boxes=[[list(box) for _, box in prompts[frame]]])
            model(inference_session=session, frame_idx=frame)
        for output in model.propagate_in_video_iterator(session, start_frame_idx=min(prompts)):
            masks = processor.post_process_masks([output.pred_masks], original_sizes=[[height, width]],
                                                 binarize=True)[0][:, 0]
            answers[output.frame_idx] = (list(output.object_ids), masks.numpy(),
                                         output.object_score_logits.reshape(-1).numpy())
    return answers


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) pixels, x1 and y1 exclusive, of an H×W bool mask; None when empty."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)


def interpolated_box(sequence: list[dict], frame: int, width: int, height: int) -> tuple | None:
    """The box Label Studio shows on 1-based `frame` for a keyframe list (pixels), or None when hidden:
    linear between keyframes, none before the first, none after an `enabled: false` keyframe until the next."""
    before = [keyframe for keyframe in sequence if keyframe["frame"] <= frame]
    if not before:
        return None
    previous = before[-1]
    after = [keyframe for keyframe in sequence if keyframe["frame"] > frame]
    if previous["frame"] != frame and not previous["enabled"]:
        return None
    if previous["frame"] == frame or not after:
        weight, following = 0.0, previous
    else:
        following = after[0]
        weight = (frame - previous["frame"]) / (following["frame"] - previous["frame"])
    values = [previous[name] * (1 - weight) + following[name] * weight for name in ("x", "y", "width", "height")]
    x, y, w, h = values[0] * width / 100, values[1] * height / 100, values[2] * width / 100, values[3] * height / 100
    return (x, y, x + w, y + h)


def oracle_concepts(folder: Path, frames: np.ndarray, phrases: list[str]) -> dict[int, dict]:
    """0-based frame -> `Sam3VideoProcessor.postprocess_outputs` of that frame (object_ids, scores, masks
    objects×H×W bool, prompt_to_obj_ids), for SAM 3's video model given the whole video and the phrases, run
    as transformers' documentation shows."""
    import transformers

    model = transformers.Sam3VideoModel.from_pretrained(folder, local_files_only=True).eval()
    processor = transformers.Sam3VideoProcessor.from_pretrained(folder, local_files_only=True)
    session = processor.init_video_session(video=list(frames), inference_device="cpu", dtype=torch.float32)
    processor.add_text_prompt(inference_session=session, text=phrases)
    answers = {}
    with torch.inference_mode():
        for output in model.propagate_in_video_iterator(inference_session=session):
            answers[output.frame_idx] = processor.postprocess_outputs(session, output)
    return answers


def box_iou(a: tuple, b: tuple) -> float:
    """IoU of two (x0, y0, x1, y1) pixel boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
