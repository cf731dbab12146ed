# syntax=docker/dockerfile:1
#
# Segment Anything ML backend for Label Studio.
#
#   docker build -t sam-ls-backend .                                     CPU torch, weights fetched at start-up
#   docker build --build-arg TORCH_VARIANT=cuda -t sam-ls-backend:cuda . CUDA torch (run with --gpus all)
#   docker build --build-arg BAKE_MODELS=mobile_sam -t sam-ls-backend .  weights inside the image
#   docker build --build-arg ONNX=mobile_sam -t sam-ls-backend:onnx .   ONNX Runtime only, no torch inside
#
#   docker run -p 9090:9090 -v "$PWD/models:/app/models" sam-ls-backend
#
# On a CPU the server runs MobileSAM on ONNX Runtime (RUNTIME=auto): baked weights are exported at build
# time; weights fetched into the volume are exported once, on the first start (gunicorn.conf.py's
# on_starting hook, before any worker), and kept there.
#
# Weights live in the volume at /app/models by default: on start-up docker-entrypoint.sh fetches the
# configured checkpoint there when it is missing, so the image stays small and a fresh volume downloads
# once. With BAKE_MODELS the checkpoints are in the image instead; do not mount a volume over /app/models
# then, or it hides them.

# ---------------------------------------------------------------------------------------------------
# base: Python plus curl, which download_models.sh uses (at build time for BAKE_MODELS, at start-up otherwise).
FROM python:3.11-slim AS base
# bash with pipefail, so that a failing command inside a pipe fails the build.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Debian's own versions of two tools that only fetch files: pinning them would break on every base update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------------
# builder: every Python dependency in a virtual environment that the runtime stage copies whole.
FROM base AS builder
# cpu: the CPU-only wheels from PyTorch's own index, without the CUDA libraries PyPI's build brings (GBs).
# cuda: PyPI's default torch build, which is the CUDA one and brings its CUDA libraries along.
ARG TORCH_VARIANT=cpu
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
# torch and torchvision first, from the index the variant needs, at the versions requirements.txt pins
# (so the pins live in one place). The second install then finds them satisfied ("2.14.1+cpu" matches
# "==2.14.1") and adds the rest without touching torch. $index is meant to split into words.
# hadolint ignore=SC2086
RUN set -eu; \
    grep -E '^(torch|torchvision)==' /tmp/requirements.txt > /tmp/torch-requirements.txt; \
    case "$TORCH_VARIANT" in \
        cpu) index="--index-url https://download.pytorch.org/whl/cpu" ;; \
        cuda) index="" ;; \
        *) echo "TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac; \
    pip install --no-cache-dir $index -r /tmp/torch-requirements.txt; \
    pip install --no-cache-dir -r /tmp/requirements.txt

# ---------------------------------------------------------------------------------------------------
# weights: checkpoints baked in at build time, only when BAKE_MODELS names some (e.g. "mobile_sam",
# "vit_h", "mobile_sam vit_b", "all"); otherwise an empty folder.
FROM base AS weights
ARG BAKE_MODELS=""
COPY download_models.sh download_models.sha256 /opt/fetch/
# $BAKE_MODELS is meant to split into words: one argument per model.
# hadolint ignore=SC2086
RUN mkdir -p /models \
    && if [ -n "$BAKE_MODELS" ]; then MODEL_DIR=/models bash /opt/fetch/download_models.sh $BAKE_MODELS; fi

# ---------------------------------------------------------------------------------------------------
# exported: the baked MobileSAM checkpoint exported for RUNTIME=auto (ONNX Runtime on a CPU) at build time,
# beside it, under the name the server looks for, so a container starts ready. The export is checked
# against torch (masks IoU >= 0.999) and a failed export or check fails the build (RUNTIME=onnx).
FROM builder AS exported
COPY --from=weights /models/ /models/
COPY *.py /opt/export/
COPY sam_ls_backend /opt/export/sam_ls_backend
WORKDIR /opt/export
RUN set -eu; \
    if [ -f /models/mobile_sam.pt ]; then \
        MODEL_DIR=/models SAM_CHOICE=MobileSAM RUNTIME=onnx DEVICE=cpu python _wsgi.py --prepare-runtime; \
    fi

# ---------------------------------------------------------------------------------------------------
# onnx: with ONNX=<one model of download_models.sh> (mobile_sam, vit_b, vit_l, vit_h), that checkpoint
# exported at build time, image encoder included, by onnx_converter.py, which checks the graphs against
# torch: a failed export or check fails the build. Without ONNX, an empty folder.
FROM builder AS onnx
ARG ONNX=""
COPY download_models.sh download_models.sha256 /opt/fetch/
COPY *.py /opt/export/
COPY sam_ls_backend /opt/export/sam_ls_backend
RUN set -eu; \
    mkdir -p /onnx; \
    if [ -n "$ONNX" ]; then \
        case "$ONNX" in \
            mobile_sam | vit_b | vit_l | vit_h) ;; \
            *) echo "ONNX must name one model: mobile_sam, vit_b, vit_l or vit_h, not '$ONNX'" >&2; exit 1 ;; \
        esac; \
        MODEL_DIR=/tmp/checkpoint bash /opt/fetch/download_models.sh "$ONNX"; \
        mv /tmp/checkpoint/*.pt* /tmp/sam.pt; \
        python /opt/export/onnx_converter.py --checkpoint /tmp/sam.pt --encoder --output-dir /onnx; \
        rm -rf /tmp/checkpoint /tmp/sam.pt; \
    fi

# ---------------------------------------------------------------------------------------------------
# serving-venv: the builder's environment, or with ONNX one from requirements-onnx.txt alone (no torch).
FROM base AS serving-venv
ARG ONNX=""
COPY --from=builder /opt/venv /opt/venv
COPY requirements-onnx.txt /tmp/requirements-onnx.txt
RUN set -eu; \
    if [ -n "$ONNX" ]; then \
        rm -rf /opt/venv; \
        python -m venv /opt/venv; \
        /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements-onnx.txt; \
    fi

# ---------------------------------------------------------------------------------------------------
# runtime: the server, as a user without privileges.
FROM base AS runtime
ARG ONNX=""
# The uid that owns /app/models: match it to the host user when /app/models is a bind mount.
ARG APP_UID=1000
RUN useradd --create-home --uid "$APP_UID" --user-group --shell /usr/sbin/nologin app \
    && mkdir -p /app/models \
    && chown app:app /app/models
ENV PATH=/opt/venv/bin:$PATH \
    PORT=9090 \
    MALLOC_MMAP_THRESHOLD_=4294967296 \
    MALLOC_TRIM_THRESHOLD_=68719476736 \
    MALLOC_ARENA_MAX=1
# glibc malloc tuned not to hand the encoder's large buffers back to the kernel after every image
# (measured 1.7x faster image encoding with these two thresholds), and to keep them in one arena rather
# than one per thread (resident memory then stays flat over hundreds of images).
WORKDIR /app
COPY --from=serving-venv /opt/venv /opt/venv
COPY --from=exported --chown=app:app /models/ /app/models/
# An ONNX image serves its exported graphs (empty settings, ignored, in the torch image).
COPY --from=onnx /onnx/ /app/onnx/
ENV SAM_CHOICE=${ONNX:+ONNX} \
    ONNX_DECODER=${ONNX:+/app/onnx/sam.decoder.onnx} \
    ONNX_ENCODER=${ONNX:+/app/onnx/sam.encoder.onnx}
# The code stays owned by root, so the server cannot rewrite itself; only /app/models is writable.
COPY . /app
# Numeric, so that runtimes which enforce "not root" (Kubernetes runAsNonRoot) can verify it.
USER ${APP_UID}
EXPOSE 9090
# /health answers as soon as a worker has loaded the model; the start period covers loading (and the
# first start's download of a small checkpoint). Basic auth, when configured, is sent along.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import base64, os, urllib.request as r; u = os.environ.get('BASIC_AUTH_USER', ''); h = {'Authorization': 'Basic ' + base64.b64encode((u + ':' + os.environ.get('BASIC_AUTH_PASS', '')).encode()).decode()} if u else {}; r.urlopen(r.Request('http://127.0.0.1:' + (os.environ.get('PORT') or '9090') + '/health', headers=h), timeout=4)"]
ENTRYPOINT ["/app/docker-entrypoint.sh"]
# gunicorn.conf.py takes HOST, PORT, WORKERS, THREADS and LOG_LEVEL from the environment. No --preload:
# each worker loads its own model after the fork.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "_wsgi:app"]
