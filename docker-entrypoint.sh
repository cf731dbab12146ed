#!/usr/bin/env bash
#
# Container start-up: make sure the checkpoint the server is configured to load is there (fetching the
# official one with download_models.sh when it is missing), then replace this shell with the server.
#
# Weights normally live in a volume mounted at /app/models, so the first start of a fresh volume
# downloads once and every later start finds the file. Any other command (a shell, the tests) runs as is.
set -euo pipefail

APP_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"

# The checkpoint path as the server itself resolves it (SAM_CHOICE, MODEL_DIR, *_CHECKPOINT and their
# aliases), so the two can never disagree. Prints nothing when there is nothing to fetch or the settings
# are invalid: the server then reports the problem in its own words.
configured_checkpoint() {
    (cd "$APP_DIR" && python - 2>/dev/null <<'EOF') || true
from sam_ls_backend.predictors.registry import model_spec
from sam_ls_backend.settings import Settings

settings = Settings.from_env()
if settings.sam_choice in ("MobileSAM", "SAM", "SAM2", "SAM3"):
    print(model_spec(settings.sam_choice).main_file(settings).path)
EOF
}

# Which download_models.sh model provides this file (or Hugging Face folder), if it has an official name.
# SAM 3 is gated: its download needs HF_TOKEN in the container's environment.
model_for() {
    case "$(basename -- "$1")" in
        mobile_sam.pt) echo "mobile_sam" ;;
        sam_vit_b_01ec64.pth) echo "vit_b" ;;
        sam_vit_l_0b3195.pth) echo "vit_l" ;;
        sam_vit_h_4b8939.pth) echo "vit_h" ;;
        sam2.1-hiera-tiny) echo "sam2" ;;
        sam2.1-hiera-small) echo "sam2-small" ;;
        sam2.1-hiera-base-plus) echo "sam2-base-plus" ;;
        sam2.1-hiera-large) echo "sam2-large" ;;
        sam3) echo "sam3" ;;
        *) return 1 ;;
    esac
}

ensure_checkpoint() {
    local path model
    path="$(configured_checkpoint)"
    if [[ -z $path || -e $path ]]; then
        return 0
    fi
    if ! model="$(model_for "$path")"; then
        echo "docker-entrypoint: $path does not exist and is not an official checkpoint name, so it is not fetched" >&2
        return 0
    fi
    echo "docker-entrypoint: $path is missing; fetching the official $model checkpoint"
    # Fails with one line that says what to do; the container then stops instead of serving nothing.
    MODEL_DIR="$(dirname -- "$path")" bash "$APP_DIR/download_models.sh" "$model"
}

case "${1:-}" in
    gunicorn) ensure_checkpoint ;;
    python | python3) if [[ ${2:-} == "_wsgi.py" ]]; then ensure_checkpoint; fi ;;
esac

exec "$@"
