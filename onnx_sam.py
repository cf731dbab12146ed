"""SAM served by ONNX Runtime (`SAM_CHOICE=ONNX`): not part of this release yet.

The ONNX path (decoder with the image size as an input, optional ONNX image encoder, torch-free serving)
is planned; until it lands, choosing it stops the server at start-up with a message instead of serving a
model that cannot answer.
"""

from __future__ import annotations

from errors import ConfigError
from settings import Settings


def load_onnx_predictor(settings: Settings):
    """Refuse clearly: there is no ONNX predictor in this release."""
    raise ConfigError("SAM_CHOICE=ONNX is not available in this release yet; use SAM_CHOICE=MobileSAM or SAM")
