"""Model timings for Prometheus, one set per process (a process serves one model)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

REGISTRY = CollectorRegistry()

ENCODER_SECONDS = Histogram("sam_encoder_seconds", "image encoder time per image (download and decode excluded)",
                            registry=REGISTRY, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32))
DECODER_SECONDS = Histogram("sam_decoder_seconds", "prompt decoding time per object, upscaling included",
                            registry=REGISTRY, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
