"""Video tracking speed and memory: frames tracked per second with SAM 2.1-tiny at its real size (random
weights cost the same compute as trained ones), on 640×360 and 1280×720 videos, for 1 and 4 objects; and,
in the same run, the path Label Studio's own tracking example takes (every frame decoded again and written
as a JPEG file, a new inference session over the whole video, five points per keyframe).

The backend's path is the server's own: `VideoFile` (PyAV, frames decoded as the tracker asks) and
`VideoTracker.begin` / `advance`. Resident memory is read from the kernel on every tracked frame: the table
shows its peak. A first short run warms torch and the decoders up (about 10 s once per process here) and is
not counted.

A separate long run (`--memory-frames N`, one object at 640×360, backend path only) prints the resident memory
along the track: the tracker's memory bank fills during its first frames, so growth is read after that, over
the second half of the track.

    python -m bench.bench_video [--frames N] [--size real|tiny] [--memory-frames N]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.machine import cpu_model
from sam_ls_backend.compute_thread import COMPUTE
from tests.support.hf_checkpoints import save_sam2_video_folder
from tests.support.videos import Square, scene_frames, write_webm

SIZES = ((640, 360), (1280, 720))
OBJECTS = (1, 4)
EXAMPLE_POINTS = 5  # points per keyframe the Label Studio example samples in a box


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40, help="frames tracked per case")
    parser.add_argument("--size", choices=("real", "tiny"), default="real", help="model size (tiny: smoke run)")
    parser.add_argument("--memory-frames", type=int, default=0,
                        help="only the long memory run: frames tracked (one object, 640×360); 0: the speed table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        if args.memory_frames:
            header(args.memory_frames, args.size, table=False)
            COMPUTE.run(memory_along_track, Path(work), args.memory_frames, args.size)
        else:
            header(args.frames, args.size)
            COMPUTE.run(measure, Path(work), args.frames, args.size, print_row)
    print(f"load average at the end {os.getloadavg()[0]:.1f}", flush=True)
    return 0


def squares(count: int, width: int) -> list[Square]:
    size = width // 12
    return [Square((size + 2 * size * i, size + size * (i % 2)), (2, 1), size) for i in range(count)]


def rss_mb() -> float:
    """The process's resident memory now, in MB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


Row = tuple[str, int, float, float]


def warmed_tracker(work: Path, size: str):
    """The server's SAM 2.1-tiny tracker from a random-weight hub folder, warmed up on a short video."""
    from sam_ls_backend.media.video import VideoFile
    from sam_ls_backend.predictors.files import ModelFile
    from sam_ls_backend.predictors.video import load_video_tracker
    from sam_ls_backend.settings import Settings

    folder = save_sam2_video_folder(work / "sam2.1-hiera-tiny", size=size, object_score_bias=4.0)
    tracker = load_video_tracker(Settings.from_env({}), ModelFile(folder, "SAM2_MODEL_DIR", "sam2"),
                                 "Sam2VideoModel", "Sam2VideoProcessor", "sam2")
    warm = work / "warm.webm"
    write_webm(warm, scene_frames(3, 64, 64, squares(1, 64)))
    video = VideoFile(warm, 10)
    tracker.advance(tracker.begin(video, {0: [(1, squares(1, 64)[0].box(0))]}, len(video)), video, float("inf"))
    video.close()
    return tracker


def memory_along_track(work: Path, frames: int, size: str) -> None:
    """Prints the resident memory at eight points along the track of one object over `frames` frames of a
    640×360 video on the backend's path, and its growth over the track's second half, per 1 000 frames."""
    from sam_ls_backend.media.video import VideoFile

    tracker = warmed_tracker(work, size)
    width, height = SIZES[0]
    path = work / "memory.webm"
    write_webm(path, scene_frames(frames, width, height, squares(1, width)))
    video = VideoFile(path, 100_000)
    memory: list[float] = []
    started = time.perf_counter()
    track = tracker.begin(video, {0: [(1, squares(1, width)[0].box(0))]}, len(video))
    tracker.advance(track, video, deadline=float("inf"), observe=lambda *_: memory.append(rss_mb()))
    seconds = time.perf_counter() - started
    video.close()
    every = max(1, len(memory) // 8)
    samples = ", ".join(f"{index + 1}: {mb:.0f}" for index, mb in enumerate(memory) if (index + 1) % every == 0)
    middle = len(memory) // 2
    growth = (memory[-1] - memory[middle]) * 1000 / max(1, len(memory) - 1 - middle)
    print(f"one object, {width}×{height}, {len(memory)} frames tracked in {seconds:.0f} s "
          f"({len(memory) / seconds:.2f} frames/s); resident MB after frame {samples}; peak {max(memory):.0f} MB; "
          f"growth over frames {middle + 1}–{len(memory)}: {growth:+.0f} MB per 1 000 frames", flush=True)


def measure(work: Path, frames: int, size: str, on_row: Callable[[Row], None]) -> None:
    """(case, objects, frames per second, peak RSS MB) rows, each handed to `on_row` as soon as it is measured
    (a run cut short still shows the rows it finished)."""
    from sam_ls_backend.media.video import VideoFile

    tracker = warmed_tracker(work, size)
    for width, height in SIZES:
        path = work / f"video-{width}.webm"
        write_webm(path, scene_frames(frames, width, height, squares(max(OBJECTS), width)))
        for count in OBJECTS:
            prompts = {0: [(number, square.box(0)) for number, square in enumerate(squares(count, width), 1)]}
            video = VideoFile(path, 100_000)
            memory: list[float] = []
            started = time.perf_counter()
            track = tracker.begin(video, prompts, len(video))
            tracker.advance(track, video, deadline=float("inf"), observe=lambda *_, into=memory: into.append(rss_mb()))
            seconds = time.perf_counter() - started
            video.close()
            on_row((f"backend {width}×{height}", count, frames / seconds, max(memory)))
            example_seconds = label_studio_example(tracker, path, prompts, work)
            on_row((f"LS example path {width}×{height}", count, frames / example_seconds, float("nan")))


def label_studio_example(tracker, path: Path, prompts: dict, work: Path) -> float:
    """Seconds the example's path takes for the same request: decode every frame to a JPEG file, read them all
    back, one inference session over the whole video, five points per keyframe box, propagate."""
    import cv2
    import torch

    from tests.support.videos import decode_all

    started = time.perf_counter()
    folder = work / "jpeg"
    folder.mkdir(exist_ok=True)
    for index, frame in enumerate(decode_all(path)):
        cv2.imwrite(str(folder / f"{index:06d}.jpg"), frame[:, :, ::-1])
    frames = [cv2.imread(str(file))[:, :, ::-1] for file in sorted(folder.glob("*.jpg"))]
    processor, model = tracker.processor, tracker.model
    session = processor.init_video_session(video=frames, inference_device=model.device, dtype=torch.float32)
    with torch.inference_mode():
        for frame, objects in prompts.items():
            for object_id, (x0, y0, x1, y1) in objects:
                points = [[(x0 + x1) / 2, (y0 + y1) / 2]] + [
                    [x0 + (x1 - x0) * fx, y0 + (y1 - y0) * fy] for fx, fy in ((.3, .3), (.7, .3), (.3, .7), (.7, .7))]
                processor.add_inputs_to_inference_session(session, frame_idx=frame, obj_ids=[object_id],
                                                          input_points=[[points[:EXAMPLE_POINTS]]],
                                                          input_labels=[[[1] * EXAMPLE_POINTS]])
                model(inference_session=session, frame_idx=frame)
        for _ in model.propagate_in_video_iterator(session, start_frame_idx=min(prompts)):
            pass
    return time.perf_counter() - started


def header(frames: int, size: str, table: bool = True) -> None:
    import av
    import torch
    import transformers

    print(f"SAM 2.1-tiny ({size} size, random weights), {frames} frames per case; {cpu_model()}, "
          f"{platform.system()} {platform.machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"transformers {transformers.__version__}, PyAV {av.__version__}, Python {sys.version.split()[0]}; "
          f"load average at the start {os.getloadavg()[0]:.1f} (other work on the machine slows every row alike)")
    if not table:
        return
    print("| path | objects | frames/s | peak RSS |")
    print("|---|---|---|---|", flush=True)


def print_row(row: Row) -> None:
    case, objects, fps, peak = row
    memory = "" if np.isnan(peak) else f"{peak:.0f} MB"
    print(f"| {case} | {objects} | {fps:.2f} | {memory} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
