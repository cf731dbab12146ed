"""Fine-tuned decoders of one base checkpoint, as files every worker and replica reads.

In LEARN_DIR (default: the checkpoint's folder), named by the base checkpoint's stem and fingerprint:

- `<stem>.<fingerprint>.learned-v<N>.pt`: the prompt encoder and mask decoder weights of version N (torch), and
  `.learned-v<N>.decoder.onnx`: the same as an ONNX Runtime prompt graph (for RUNTIME=onnx / auto on a CPU);
- `<stem>.<fingerprint>.learned.json`: the version served (0: the base model) and the figures of the trainings;
- `<stem>.<fingerprint>.learned-rejected.pt`: the last decoder that did not beat the served one, kept aside;
- `<stem>.<fingerprint>.annotations.sqlite`: the annotation store (without REDIS_URL).

Every file appears by an atomic rename, so a worker never reads half of one. Deleting `learned.json` (or
LEARN=off) serves the base model again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from sam_ls_backend.predictors.files import fingerprint


@dataclass(frozen=True)
class LearningStatus:
    """What `learned.json` records: the version served and the last training's figures."""

    served: int = 0  # version served; 0 is the base checkpoint's own decoder
    trainings: int = 0  # trainings finished (adopted or not)
    # Click IoU on the held-out masks, in the last training: of the decoder served before it, of the one it made.
    held_out_before: float | None = None
    held_out_after: float | None = None
    adopted: bool = False  # the last training's decoder is the one served
    trained_on: int = 0  # masks the last training learned from
    held_out: int = 0  # masks it was judged on
    seconds: float = 0.0  # how long it took


@dataclass(frozen=True)
class LearnedDecoder:
    """One adopted version's files."""

    version: int
    weights: Path  # torch state dict: prompt_encoder.* and mask_decoder.*
    onnx: Path  # the ONNX Runtime prompt graph of the same weights (may be missing)


class LearnedDecoders:
    """The fine-tuned decoders of `checkpoint`, in `folder`."""

    def __init__(self, folder: Path, checkpoint: Path) -> None:
        self.folder = folder
        self.stem = f"{checkpoint.stem}.{fingerprint('learned-decoder', [checkpoint])}"
        self.status_path = folder / f"{self.stem}.learned.json"
        self.store_path = folder / f"{self.stem}.annotations.sqlite"
        self.rejected_path = folder / f"{self.stem}.learned-rejected.pt"

    def decoder(self, version: int) -> LearnedDecoder:
        return LearnedDecoder(version, self.folder / f"{self.stem}.learned-v{version}.pt",
                              self.folder / f"{self.stem}.learned-v{version}.decoder.onnx")

    def status(self) -> LearningStatus:
        """The recorded status; the base model's when there is none or it cannot be read."""
        try:
            recorded = json.loads(self.status_path.read_text())
            return LearningStatus(**{k: v for k, v in recorded.items() if k in LearningStatus.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return LearningStatus()

    def served(self) -> LearnedDecoder | None:
        """The adopted decoder to serve, or None for the base model (also when its file is gone)."""
        version = self.status().served
        if version <= 0:
            return None
        decoder = self.decoder(version)
        return decoder if decoder.weights.is_file() else None

    def status_stamp(self) -> int:
        """Changes whenever the status file is replaced (its mtime in ns; 0 when absent): cheap to poll."""
        try:
            return self.status_path.stat().st_mtime_ns
        except OSError:
            return 0

    def record(self, status: LearningStatus) -> None:
        write_atomically(self.status_path, json.dumps(asdict(status), indent=1).encode())

    @contextlib.contextmanager
    def training_lock(self) -> Iterator[bool]:
        """Yields True to the one process that may train now (others: False); held until the block ends."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{self.stem}.training.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomically(path: Path, data: bytes) -> None:
    """`data` as `path`, appearing whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise
