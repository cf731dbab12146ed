"""Every setting of the backend, read from the environment in one place.

`Settings.from_env()` is called once at start-up; everything else receives the frozen value. Each field
documents its environment variable and default; the README's configuration table mirrors this file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sam_ls_backend.errors import ConfigError
from sam_ls_backend.outputs import RESULT_TYPES
from sam_ls_backend.predictors.registry import MODELS

REPOSITORY = Path(__file__).resolve().parents[1]

MODEL_TYPES = ("auto", "vit_t", "vit_b", "vit_l", "vit_h")
RUNTIMES = ("auto", "torch", "onnx")
PREANNOTATE_KINDS = ("off", "concepts", "everything")
LEARN_MODES = ("off", "on")


@dataclass(frozen=True)
class Settings:
    """Configuration of one backend process. Field names are the environment variables, lower-cased."""

    # Model. SAM_CHOICE=MobileSAM (default), SAM, ONNX (ONNX Runtime, files below), SAM2 (SAM 2 / 2.1) or SAM3
    # (text concepts and clicks); SAM2 and SAM3 load through Hugging Face transformers from the folders below.
    sam_choice: str = "MobileSAM"
    # Folder that relative checkpoint paths are resolved against (MODEL_DIR, `--model-dir`).
    model_dir: Path = REPOSITORY / "models"
    mobilesam_checkpoint: str = "mobile_sam.pt"
    # SAM_CHECKPOINT; VITH_CHECKPOINT is accepted as an alias (the Label Studio tutorial's name).
    sam_checkpoint: str = "sam_vit_h_4b8939.pth"
    # vit_h | vit_l | vit_b | vit_t, or auto: recognised from the checkpoint's weights.
    sam_model_type: str = "auto"
    # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    device: str = "auto"
    # Threads torch may use for one forward pass; 0 keeps torch's default.
    torch_threads: int = 0
    # Name reported to Label Studio as the prediction's model_version; empty derives one from the model.
    model_version: str = ""
    # What runs MobileSAM and SAM: auto (ONNX Runtime on a CPU for the models measured faster there, exported
    # from the checkpoint once; torch on a GPU, or when the export fails), torch, or onnx (exported whatever
    # the device; a failed export stops the server). SAM_CHOICE=ONNX, SAM2 and SAM3 ignore it.
    runtime: str = "auto"
    # Where RUNTIME's exported graphs are kept; empty: beside the checkpoint.
    onnx_cache_dir: str = ""
    # SAM_CHOICE=ONNX: the prompt decoder written by onnx_converter.py (alias ONNX_CHECKPOINT), and its
    # image encoder (`--encoder`); without ONNX_ENCODER the encoder runs in torch from the checkpoint.
    onnx_decoder: str = "mobile_sam.decoder.onnx"
    onnx_encoder: str = ""
    # SAM_CHOICE=SAM2 / SAM3: a downloaded Hugging Face model folder (facebook/sam2.1-hiera-tiny, facebook/sam3).
    sam2_model_dir: str = "sam2.1-hiera-tiny"
    sam3_model_dir: str = "sam3"

    # Label Studio: where task images live and how to authenticate there. The /setup body is a fallback.
    label_studio_url: str = ""
    label_studio_api_key: str = field(default="", repr=False)

    # Embedding cache: bytes of image embeddings kept per process, and how they are kept there: mixed (the
    # images clicked most recently in float32, masks exactly SamPredictor's; the others in float16 at half
    # the memory, masks IoU >= 0.999), float32 (all exact) or float16 (all compact).
    embedding_cache_mb: int = 512
    embedding_precision: str = "mixed"
    # Shared cache for every worker and replica (redis://host:port/db); float16 at rest, kept this long.
    redis_url: str = field(default="", repr=False)
    redis_ttl_hours: int = 168
    # Opening a task (a /predict without clicks) embeds the image of up to this many tasks in the
    # background, so the first click does not wait for the encoder; 0 turns it off.
    warm_max_tasks: int = 8

    # Answers. Which control results go to: auto (every BrushLabels / PolygonLabels on the image), brush,
    # polygon, or both (the config must then have the controls asked for).
    result_type: str = "auto"
    # Masks whose predicted IoU is below this are not returned; 0 (off) returns every mask.
    score_threshold: float = 0.0
    # Islands and holes smaller than this many pixels are removed from masks; 0 leaves masks as SAM made them.
    min_area: int = 0
    # Polygons: Douglas-Peucker tolerance in pixels, most vertices per part (its pieces together), and the
    # smallest part (and hole) in pixels that becomes a polygon of its own (smaller holes are filled).
    polygon_tolerance: float = 1.0
    polygon_max_vertices: int = 200
    polygon_min_area: int = 64
    # Label names (comma-separated) whose keypoints and rectangles count as negative, like is_positive: false.
    negative_labels: str = ""
    # Several objects of one request in one batched decoder call: on, off, or auto (on for CUDA devices).
    # Batched matrix products round differently, so a batched mask can differ from the one-object answer in
    # a few pixels per million; off keeps every mask exactly SamPredictor's.
    decoder_batch: str = "auto"

    # Pre-annotation: what a task sent without regions gets (Retrieve predictions, a task opened without a
    # prediction): off (nothing; its image is embedded for the first click), concepts (SAM_CHOICE=SAM3: every
    # label of the image's output controls is a concept; on a video task without boxes, every label of the
    # video's Labels control is found and tracked through the video) or everything (MobileSAM, SAM: automatic mask
    # generation over a point grid, as segment-anything's SamAutomaticMaskGenerator).
    preannotate: str = "off"
    # PREANNOTATE=everything: the label of its regions; empty: the output control's first label.
    preannotate_label: str = ""
    # PREANNOTATE=everything: SamAutomaticMaskGenerator's parameters, with its defaults: clicks per side of the
    # grid, clicks per decoder call, predicted-IoU filter (>), stability filter (>=), box NMS IoU threshold.
    everything_points_per_side: int = 32
    everything_points_per_batch: int = 64
    everything_pred_iou: float = 0.88
    everything_stability: float = 0.95
    everything_nms: float = 0.7
    # `python -m precompute --predictions`: tasks per /predict, and /predict calls at a time (several keep the
    # replicas behind a load balancer busy).
    predictions_batch: int = 8
    predictions_concurrency: int = 2

    # Learning from the project's annotations (MobileSAM, SAM): with LEARN=on, the masks of created and updated
    # annotations are kept (LEARN_MAX_ANNOTATIONS of them, oldest out) with their image's embedding, and the
    # prompt encoder and mask decoder are fine-tuned on Start Training and after every LEARN_EVERY new masks
    # (0: only on Start Training), in a background process of low priority for at most LEARN_TIME_BUDGET
    # seconds. Every LEARN_HELD_OUT-th mask is never trained on: a new decoder is served only if its click IoU
    # on those beats the current one's. The store and the decoders live in LEARN_DIR (empty: beside the
    # checkpoint), or the store in Redis when REDIS_URL is set.
    learn: str = "off"
    learn_every: int = 50
    learn_max_annotations: int = 2000
    learn_held_out: int = 5
    learn_time_budget: float = 600.0
    learn_steps: int = 0  # 0: the training recipe's own number of steps
    learn_dir: str = ""

    # Image download limits.
    image_connect_timeout: float = 5.0
    image_read_timeout: float = 30.0
    image_max_mb: int = 64
    image_max_megapixels: int = 150
    # Longest a whole download may take, redirects included: a server trickling bytes cannot hold a thread.
    image_total_timeout: float = 60.0
    # Hosts ('name' or 'name:port', comma-separated) whose images may sit on loopback, private or link-local
    # addresses; Label Studio's own host always may. Every other host must resolve to public addresses only.
    allowed_image_hosts: str = ""

    # Video tasks (SAM_CHOICE=SAM2 or SAM3). A task's video is downloaded for each request within
    # VIDEO_MAX_MB and VIDEO_DOWNLOAD_TIMEOUT; videos of more than VIDEO_MAX_FRAMES frames are refused (413),
    # not tracked in part.
    video_max_mb: int = 1024
    video_download_timeout: float = 30.0
    video_max_frames: int = 30000
    # Seconds one request may spend tracking (below Label Studio's 100 s wait): the frames left are tracked
    # by the next request for the same objects, which continues where this one stopped.
    video_time_budget: float = 45.0
    # Tracked keyframes are sent only where Label Studio's linear interpolation between them would stray
    # more than this many pixels from the tracked box; 0 sends every tracked frame.
    video_keyframe_tolerance: float = 2.0
    # Tracking state (memories of the last frames per object) kept per worker for continuation, in MB.
    video_state_mb: int = 512

    # HTTP server.
    host: str = "0.0.0.0"
    port: int = 9090
    workers: int = 1
    threads: int = 8
    log_level: str = "INFO"
    request_max_mb: int = 32
    basic_auth_user: str = ""
    basic_auth_pass: str = field(default="", repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: str) -> Settings:
        """Build settings from `environ` (default: the process environment), then `overrides`.

        `overrides` use the same names as the environment (any case), as `--kwargs k=v` passes them.
        """
        env = dict(os.environ if environ is None else environ)
        unknown = [key for key in overrides if key.upper() not in _FIELD_TYPES and key.upper() not in _ALIASES]
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        env.update({key.upper(): value for key, value in overrides.items()})
        for alias, name in _ALIASES.items():
            if env.get(alias) and not env.get(name):
                env[name] = env[alias]
        values: dict[str, Any] = {}
        for name, kind in _FIELD_TYPES.items():
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[name.lower()] = _convert(name, raw, kind)
        settings = cls(**values)
        settings._validate()
        return settings

    def with_overrides(self, **values: Any) -> Settings:
        """A copy with some fields replaced (tests and the CLI use it)."""
        return replace(self, **values)

    def model_path(self, name: str) -> Path:
        """A model file's path: absolute as given, or relative to `model_dir`."""
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.model_dir / path

    @property
    def basic_auth_enabled(self) -> bool:
        return bool(self.basic_auth_user or self.basic_auth_pass)

    def _validate(self) -> None:
        if self.sam_choice not in MODELS:
            raise ConfigError(f"SAM_CHOICE must be one of {', '.join(MODELS)}, not {self.sam_choice!r}")
        if self.sam_model_type not in MODEL_TYPES:
            raise ConfigError(f"SAM_MODEL_TYPE must be one of {', '.join(MODEL_TYPES)}, not {self.sam_model_type!r}")
        device = self.device
        if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
            raise ConfigError(f"DEVICE must be auto, cpu, cuda or cuda:N, not {device!r}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ConfigError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"RUNTIME must be one of {', '.join(RUNTIMES)}, not {self.runtime!r}")
        if self.embedding_precision not in ("mixed", "float32", "float16"):
            raise ConfigError("EMBEDDING_PRECISION must be mixed, float32 or float16, "
                              f"not {self.embedding_precision!r}")
        if self.warm_max_tasks < 0:
            raise ConfigError("WARM_MAX_TASKS must be 0 or more")
        self._validate_answers()
        for name in ("embedding_cache_mb", "redis_ttl_hours", "image_max_mb", "image_max_megapixels", "request_max_mb",
                     "workers", "threads", "image_total_timeout", "video_max_mb", "video_download_timeout",
                     "video_max_frames", "video_time_budget", "video_state_mb"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.upper()} must be positive")

    def _validate_answers(self) -> None:
        if self.result_type not in RESULT_TYPES:
            raise ConfigError(f"RESULT_TYPE must be one of {', '.join(RESULT_TYPES)}, not {self.result_type!r}")
        if self.decoder_batch not in ("auto", "on", "off"):
            raise ConfigError(f"DECODER_BATCH must be auto, on or off, not {self.decoder_batch!r}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError("SCORE_THRESHOLD must be between 0 and 1")
        if self.polygon_max_vertices < 4:
            raise ConfigError("POLYGON_MAX_VERTICES must be 4 or more")
        for name in ("min_area", "polygon_min_area", "polygon_tolerance", "video_keyframe_tolerance"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.upper()} must be 0 or more")
        self._validate_preannotation()
        self._validate_learning()

    def _validate_preannotation(self) -> None:
        if self.preannotate not in PREANNOTATE_KINDS:
            raise ConfigError(f"PREANNOTATE must be one of {', '.join(PREANNOTATE_KINDS)}, not {self.preannotate!r}")
        for name in ("everything_points_per_side", "everything_points_per_batch", "predictions_batch",
                     "predictions_concurrency"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.upper()} must be positive")
        for name in ("everything_pred_iou", "everything_stability", "everything_nms"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name.upper()} must be between 0 and 1")

    def _validate_learning(self) -> None:
        if self.learn not in LEARN_MODES:
            raise ConfigError(f"LEARN must be on or off, not {self.learn!r}")
        if self.learn_every < 0 or self.learn_steps < 0:
            raise ConfigError("LEARN_EVERY and LEARN_STEPS must be 0 or more")
        if self.learn_held_out < 2:
            raise ConfigError("LEARN_HELD_OUT must be 2 or more (every N-th mask is held out)")
        if self.learn_max_annotations <= 0 or self.learn_time_budget <= 0:
            raise ConfigError("LEARN_MAX_ANNOTATIONS and LEARN_TIME_BUDGET must be positive")

    @property
    def negative_label_names(self) -> frozenset[str]:
        """NEGATIVE_LABELS as a set of label names."""
        return frozenset(name.strip() for name in self.negative_labels.split(",") if name.strip())


# Older names users know from the Label Studio SAM tutorial and SDK, mapped to ours.
_ALIASES = {
    "VITH_CHECKPOINT": "SAM_CHECKPOINT",
    "ONNX_CHECKPOINT": "ONNX_DECODER",
    "LABEL_STUDIO_HOST": "LABEL_STUDIO_URL",
    "LABEL_STUDIO_ACCESS_TOKEN": "LABEL_STUDIO_API_KEY",
}

_FIELD_TYPES = {f.name.upper(): f.type for f in fields(Settings)}


def _convert(name: str, raw: str, kind: object) -> object:
    """Turn one environment string into the field's type, with an error that names the variable."""
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw).expanduser().resolve()
    except ValueError:
        raise ConfigError(f"{name} must be a {kind}, not {raw!r}") from None
    if name == "SAM_CHOICE":
        return {c.lower(): c for c in MODELS}.get(raw.strip().lower(), raw)
    if name in ("SAM_MODEL_TYPE", "RUNTIME", "DEVICE", "EMBEDDING_PRECISION", "RESULT_TYPE", "DECODER_BATCH",
                "PREANNOTATE", "LEARN"):
        return raw.strip().lower()
    if name == "LABEL_STUDIO_URL":
        return raw.strip().rstrip("/")
    return raw
