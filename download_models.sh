#!/usr/bin/env bash
#
# Fetch the official Segment Anything checkpoints that the backend loads, each verified by SHA-256.
#
#   ./download_models.sh              MobileSAM (the default model, ~39 MB)
#   ./download_models.sh vit_h        SAM ViT-H (~2.4 GB)
#   ./download_models.sh all          every checkpoint
#
# The expected checksums live in download_models.sha256 beside this script, in sha256sum format, so a
# checkpoint copied in by hand can be checked with the same list. See --help for the settings.
set -euo pipefail

HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
MANIFEST="$HERE/download_models.sha256"

# MODEL_DIR is also the server's setting: relative checkpoint names resolve against it there too.
MODEL_DIR="${MODEL_DIR:-$HERE/models}"
SAM_DOWNLOAD_BASE_URL="${SAM_DOWNLOAD_BASE_URL:-https://dl.fbaipublicfiles.com/segment_anything}"
MOBILESAM_DOWNLOAD_URL="${MOBILESAM_DOWNLOAD_URL:-https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt}"

MODELS=(mobile_sam vit_b vit_l vit_h)

usage() {
    cat <<EOF
Usage: $(basename "$0") [MODEL ...]

Download Segment Anything checkpoints into MODEL_DIR and verify their SHA-256.
MODEL is one of: mobile_sam (default), vit_b, vit_l, vit_h, all.

  mobile_sam  mobile_sam.pt         ~39 MB   MobileSAM (SAM_CHOICE=MobileSAM)
  vit_b       sam_vit_b_01ec64.pth  ~375 MB  SAM ViT-B (SAM_CHOICE=SAM, SAM_CHECKPOINT=...)
  vit_l       sam_vit_l_0b3195.pth  ~1.2 GB  SAM ViT-L
  vit_h       sam_vit_h_4b8939.pth  ~2.4 GB  SAM ViT-H

A file that is already there with the right checksum is kept as it is. One with another checksum
is reported and replaced, but only once the new download has been verified. Downloads go to a
temporary file in MODEL_DIR and are moved into place only after their checksum matches.
Expected checksums: download_models.sha256 beside this script.

Environment:
  MODEL_DIR               where checkpoints go (default: models/ beside this script)
  MOBILESAM_DOWNLOAD_URL  full URL of mobile_sam.pt, for a mirror
                          (default: $MOBILESAM_DOWNLOAD_URL)
  SAM_DOWNLOAD_BASE_URL   folder URL that holds the sam_vit_*.pth files, for a mirror
                          (default: $SAM_DOWNLOAD_BASE_URL)
A mirror must serve the same files: the checksums are checked all the same.

Exit status: 0 when every requested checkpoint is in place and verified, 1 when one could not be
downloaded or verified, 2 on a usage error.
EOF
}

# --- What each model is: its file, the URL it comes from, and the setting that names it. ---

file_of() {
    case "$1" in
        mobile_sam) echo "mobile_sam.pt" ;;
        vit_b) echo "sam_vit_b_01ec64.pth" ;;
        vit_l) echo "sam_vit_l_0b3195.pth" ;;
        vit_h) echo "sam_vit_h_4b8939.pth" ;;
    esac
}

# Shown before a download, which can be silent for minutes in a log.
size_of() {
    case "$1" in
        mobile_sam) echo "~39 MB" ;;
        vit_b) echo "~375 MB" ;;
        vit_l) echo "~1.2 GB" ;;
        vit_h) echo "~2.4 GB" ;;
    esac
}

url_of() {
    if [[ $1 == mobile_sam ]]; then
        echo "$MOBILESAM_DOWNLOAD_URL"
    else
        echo "${SAM_DOWNLOAD_BASE_URL%/}/$(file_of "$1")"
    fi
}

# The environment variable a user sets to point the server at a checkpoint they placed themselves.
setting_of() {
    if [[ $1 == mobile_sam ]]; then echo "MOBILESAM_CHECKPOINT"; else echo "SAM_CHECKPOINT"; fi
}

# --- Small helpers. ---

die() {
    echo "error: $*" >&2
    exit 1
}

expected_sha256() {
    awk -v name="$1" '$1 !~ /^#/ && (NF == 2) { sub(/^\*/, "", $2); if ($2 == name) { print $1; exit } }' "$MANIFEST"
}

sha256_of() {
    # sha256sum on Linux, shasum on macOS.
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum -- "$1" | cut -d' ' -f1
    else
        shasum -a 256 -- "$1" | cut -d' ' -f1
    fi
}

# A temporary file being written right now; removed on any exit so no half file is ever left.
PARTIAL=""
cleanup() {
    if [[ -n $PARTIAL ]]; then rm -f -- "$PARTIAL"; fi
}
trap cleanup EXIT
# An interrupted download must still run the EXIT trap, which a plain signal death would skip.
trap 'exit 130' INT
trap 'exit 143' TERM

# Download URL into FILE. On failure print, on stdout, why: one short phrase for the error line.
download() {
    local url=$1 out=$2 status=0 reason
    local -a curl_args=(--fail --location --connect-timeout 15 --retry 2 --output "$out")
    local errors
    errors="$(mktemp)"
    if [[ -t 2 ]]; then
        # On a terminal show curl's progress bar; curl then prints its own reason above ours.
        curl "${curl_args[@]}" --progress-bar -- "$url" || status=$?
    else
        # In logs a progress bar is noise: stay quiet and fold curl's reason into our one line.
        curl "${curl_args[@]}" --silent --show-error -- "$url" 2>"$errors" || status=$?
    fi
    reason="$(grep '^curl: ([0-9]*)' "$errors" | tail -n 1 | sed -e 's/^curl: ([0-9]*) *//' -e 's/ after [0-9]* ms//' || true)"
    rm -f -- "$errors"
    [[ $status -eq 0 ]] && return 0
    case $status in
        5 | 6 | 7 | 28 | 35 | 52 | 55 | 56) reason="offline?${reason:+ $reason}" ;;
        22) reason="${reason:-the server answered with an HTTP error}" ;;
        *) reason="${reason:-curl exit status $status}" ;;
    esac
    echo "$reason"
    return 1
}

# --- The work: make one checkpoint present and verified. ---

fetch() {
    local model=$1 file url want target have reason
    file="$(file_of "$model")"
    url="$(url_of "$model")"
    target="$MODEL_DIR/$file"
    want="$(expected_sha256 "$file")"
    [[ $want =~ ^[0-9a-f]{64}$ ]] || die "no SHA-256 for $file in $MANIFEST"

    if [[ -f $target ]]; then
        have="$(sha256_of "$target")"
        if [[ $have == "$want" ]]; then
            echo "$file: already present and verified ($target)"
            return 0
        fi
        echo "warning: $target has SHA-256 $have, expected $want; downloading the official file to replace it" >&2
    fi

    # Same folder as the target, so the final mv is an atomic rename on one file system.
    PARTIAL="$(mktemp "$MODEL_DIR/.$file.part.XXXXXX")"
    echo "fetching $file ($(size_of "$model")) from $url"
    if ! reason="$(download "$url" "$PARTIAL")"; then
        die "could not download $file from $url ($reason). Put the checkpoint at $target yourself or set $(setting_of "$model") to its path."
    fi
    have="$(sha256_of "$PARTIAL")"
    if [[ $have != "$want" ]]; then
        die "$file downloaded from $url has SHA-256 $have, expected $want; discarded it (truncated download, or the URL serves another file)."
    fi
    chmod 644 "$PARTIAL" # mktemp creates it private; the server may run as another user
    mv -f -- "$PARTIAL" "$target"
    PARTIAL=""
    echo "$file: saved and verified ($target)"
}

main() {
    local -a wanted=()
    local arg
    for arg in "$@"; do
        case $arg in
            -h | --help)
                usage
                exit 0
                ;;
            all) wanted+=("${MODELS[@]}") ;;
            mobile_sam | vit_b | vit_l | vit_h) wanted+=("$arg") ;;
            *)
                echo "error: unknown model '$arg' (expected mobile_sam, vit_b, vit_l, vit_h or all; see --help)" >&2
                exit 2
                ;;
        esac
    done
    [[ ${#wanted[@]} -gt 0 ]] || wanted=(mobile_sam)

    command -v curl >/dev/null 2>&1 || die "curl is needed to download checkpoints; install it or put the files in $MODEL_DIR yourself."
    [[ -r $MANIFEST ]] || die "checksum list $MANIFEST is missing; it belongs beside this script."
    mkdir -p -- "$MODEL_DIR" 2>/dev/null && [[ -w $MODEL_DIR ]] ||
        die "cannot write to $MODEL_DIR (a volume owned by another user?); fix its permissions or set MODEL_DIR."

    local model
    for model in "${wanted[@]}"; do
        fetch "$model"
    done
}

main "$@"
