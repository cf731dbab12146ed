#!/usr/bin/env bash
#
# Fetch the official Segment Anything checkpoints that the backend loads, each verified by SHA-256, and the
# Hugging Face model folders of SAM 2.1 and SAM 3.
#
#   ./download_models.sh              MobileSAM (the default model, ~39 MB)
#   ./download_models.sh vit_h        SAM ViT-H (~2.4 GB)
#   ./download_models.sh sam2         facebook/sam2.1-hiera-tiny into models/sam2.1-hiera-tiny (~156 MB)
#   HF_TOKEN=... ./download_models.sh sam3    facebook/sam3 (gated, ~3.4 GB)
#   ./download_models.sh all          every model that needs no token
#
# The expected checksums live in download_models.sha256 beside this script, in sha256sum format, so a
# checkpoint copied in by hand can be checked with the same list. The hub publishes no such list for its
# model folders: those are checked against the SHA-256 the hub names per weight file. See --help.
set -euo pipefail

HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
MANIFEST="$HERE/download_models.sha256"

# MODEL_DIR is also the server's setting: relative checkpoint names resolve against it there too.
MODEL_DIR="${MODEL_DIR:-$HERE/models}"
SAM_DOWNLOAD_BASE_URL="${SAM_DOWNLOAD_BASE_URL:-https://dl.fbaipublicfiles.com/segment_anything}"
MOBILESAM_DOWNLOAD_URL="${MOBILESAM_DOWNLOAD_URL:-https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt}"
# The hub's own variable names, as huggingface_hub reads them, so a mirror set up for one serves both.
HF_ENDPOINT="${HF_ENDPOINT:-https://huggingface.co}"
HF_REVISION="${HF_REVISION:-main}"

# `all` is every model that needs no token: sam3 is gated, so it is fetched only when named.
ALL=(mobile_sam vit_b vit_l vit_h sam2 sam2-small sam2-base-plus sam2-large)

usage() {
    cat <<EOF
Usage: $(basename "$0") [MODEL ...]

Download Segment Anything checkpoints and model folders into MODEL_DIR.
MODEL is one of: mobile_sam (default), vit_b, vit_l, vit_h, sam2, sam2-small, sam2-base-plus,
sam2-large, sam3, all.

Checkpoints, each checked against its SHA-256:
  mobile_sam  mobile_sam.pt         ~39 MB   MobileSAM (SAM_CHOICE=MobileSAM)
  vit_b       sam_vit_b_01ec64.pth  ~375 MB  SAM ViT-B (SAM_CHOICE=SAM, SAM_CHECKPOINT=...)
  vit_l       sam_vit_l_0b3195.pth  ~1.2 GB  SAM ViT-L
  vit_h       sam_vit_h_4b8939.pth  ~2.4 GB  SAM ViT-H

Hugging Face model folders, loaded with transformers (SAM_CHOICE=SAM2 or SAM3):
  sam2            sam2.1-hiera-tiny/       ~156 MB  facebook/sam2.1-hiera-tiny (SAM2_MODEL_DIR default)
  sam2-small      sam2.1-hiera-small/      ~184 MB  facebook/sam2.1-hiera-small
  sam2-base-plus  sam2.1-hiera-base-plus/  ~323 MB  facebook/sam2.1-hiera-base-plus
  sam2-large      sam2.1-hiera-large/      ~898 MB  facebook/sam2.1-hiera-large
  sam3            sam3/                    ~3.4 GB  facebook/sam3 (SAM3_MODEL_DIR default), gated
For another SAM 2.1 size, point the server at its folder: SAM2_MODEL_DIR=sam2.1-hiera-large.
sam3 is gated: accept its licence at https://huggingface.co/facebook/sam3 (access is granted by
hand, which can take a while), then export HF_TOKEN with a read token of that account.

all is every model that needs no token: the four checkpoints and the four SAM 2.1 folders
(~5.6 GB). sam3 is fetched only when named.

A checkpoint that is already there with the right checksum is kept as it is. One with another
checksum is reported and replaced, but only once the new download has been verified. Downloads go to
a temporary file in MODEL_DIR and are moved into place only after their checksum matches.
Expected checksums: download_models.sha256 beside this script.

The hub publishes no checksum list, so a model folder is fetched file by file (config, processor
and tokenizer files, then model.safetensors) into a temporary folder in MODEL_DIR and moved into
place only once every file has arrived: a half folder never appears under its final name. Weight
files are checked against the SHA-256 that the hub names for them (X-Linked-Etag) when it names
one, and every file comes from the commit that HF_REVISION pointed at when the first one was
fetched. A folder that is already there with every file is kept as it is (delete it to fetch
another revision); one that lacks files is reported and left alone.

Environment:
  MODEL_DIR               where checkpoints and model folders go (default: models/ beside this script)
  MOBILESAM_DOWNLOAD_URL  full URL of mobile_sam.pt, for a mirror
                          (default: $MOBILESAM_DOWNLOAD_URL)
  SAM_DOWNLOAD_BASE_URL   folder URL that holds the sam_vit_*.pth files, for a mirror
                          (default: $SAM_DOWNLOAD_BASE_URL)
  HF_ENDPOINT             the Hugging Face hub, or a mirror of it, for the model folders
                          (default: $HF_ENDPOINT)
  HF_REVISION             branch, tag or commit of the hub repositories to fetch (default: $HF_REVISION)
  HF_TOKEN                Hugging Face access token; needed for sam3, used for every hub request when
                          set. It is sent as "Authorization: Bearer" to HF_ENDPOINT only, never to the
                          storage the hub redirects to, never shown, never on a command line.
A mirror must serve the same files: the checksums are checked all the same.

Exit status: 0 when every requested model is in place (checkpoints verified), 1 when one could not
be downloaded or verified, 2 on a usage error.
EOF
}

# --- What each model is: its file or folder, where it comes from, and the setting that names it. ---

# The hub repository of a model folder; nothing for a checkpoint.
repo_of() {
    case "$1" in
        sam2) echo "facebook/sam2.1-hiera-tiny" ;;
        sam2-small) echo "facebook/sam2.1-hiera-small" ;;
        sam2-base-plus) echo "facebook/sam2.1-hiera-base-plus" ;;
        sam2-large) echo "facebook/sam2.1-hiera-large" ;;
        sam3) echo "facebook/sam3" ;;
    esac
}

# Gated repositories answer only to a token whose account has accepted the licence.
is_gated() {
    [[ $1 == sam3 ]]
}

file_of() {
    case "$1" in
        mobile_sam) echo "mobile_sam.pt" ;;
        vit_b) echo "sam_vit_b_01ec64.pth" ;;
        vit_l) echo "sam_vit_l_0b3195.pth" ;;
        vit_h) echo "sam_vit_h_4b8939.pth" ;;
        # A folder is named after its repository, as the server's defaults expect (sam2.1-hiera-tiny, sam3).
        *)
            local repo
            repo="$(repo_of "$1")"
            echo "${repo##*/}"
            ;;
    esac
}

# What from_pretrained reads from a folder: the model (config.json, model.safetensors) and its processor
# (image settings; for SAM 3 also the CLIP tokenizer of text prompts). Small files first, so that a refusal
# (gated repository, wrong token, wrong revision) comes before the big download. A trailing ? marks a file
# that transformers saved there but loading does not need: fetched when the repository has it, else skipped.
# Lists as the hub repositories hold them after transformers' "Add Transformers weights" commits.
folder_files_of() {
    if [[ $1 == sam3 ]]; then
        echo "config.json processor_config.json tokenizer_config.json tokenizer.json" \
            "special_tokens_map.json? vocab.json? merges.txt? model.safetensors"
    else
        echo "config.json processor_config.json preprocessor_config.json video_preprocessor_config.json?" \
            "model.safetensors"
    fi
}

# Shown before a download, which can be silent for minutes in a log.
size_of() {
    case "$1" in
        mobile_sam) echo "~39 MB" ;;
        vit_b) echo "~375 MB" ;;
        vit_l) echo "~1.2 GB" ;;
        vit_h) echo "~2.4 GB" ;;
        sam2) echo "~156 MB" ;;
        sam2-small) echo "~184 MB" ;;
        sam2-base-plus) echo "~323 MB" ;;
        sam2-large) echo "~898 MB" ;;
        sam3) echo "~3.4 GB" ;;
    esac
}

url_of() {
    if [[ $1 == mobile_sam ]]; then
        echo "$MOBILESAM_DOWNLOAD_URL"
    else
        echo "${SAM_DOWNLOAD_BASE_URL%/}/$(file_of "$1")"
    fi
}

# A file of a hub repository at a revision. A revision such as refs/pr/1 travels as one path segment.
hub_url_of() {
    echo "${HF_ENDPOINT%/}/$1/resolve/${2//\//%2F}/$3"
}

# The environment variable a user sets to point the server at a checkpoint or folder they placed themselves.
setting_of() {
    case "$1" in
        mobile_sam) echo "MOBILESAM_CHECKPOINT" ;;
        sam2*) echo "SAM2_MODEL_DIR" ;;
        sam3) echo "SAM3_MODEL_DIR" ;;
        *) echo "SAM_CHECKPOINT" ;;
    esac
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

# A temporary file or folder being written right now; removed on any exit so nothing half made is left.
PARTIAL=""
PARTIAL_DIR=""
cleanup() {
    if [[ -n $PARTIAL ]]; then rm -f -- "$PARTIAL"; fi
    if [[ -n $PARTIAL_DIR ]]; then rm -rf -- "$PARTIAL_DIR"; fi
}
trap cleanup EXIT
# An interrupted download must still run the EXIT trap, which a plain signal death would skip.
trap 'exit 130' INT
trap 'exit 143' TERM

# Download URL into FILE; further arguments go to curl. On failure print, on stdout, why: one short phrase
# for the error line. The status tells the HTTP answers that callers treat apart: 3 for 404 (no such file),
# 4 for 401 or 403 (refused), 1 for anything else.
download() {
    local url=$1 out=$2 status=0 code reason
    shift 2
    local -a curl_args=(--fail --location --connect-timeout 15 --retry 2 --output "$out" --write-out '%{http_code}' "$@")
    local errors
    errors="$(mktemp)"
    if [[ -t 2 ]]; then
        # On a terminal show curl's progress bar; curl then prints its own reason above ours.
        code="$(curl "${curl_args[@]}" --progress-bar -- "$url")" || status=$?
    else
        # In logs a progress bar is noise: stay quiet and fold curl's reason into our one line.
        code="$(curl "${curl_args[@]}" --silent --show-error -- "$url" 2>"$errors")" || status=$?
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
    case $code in
        404) return 3 ;;
        401 | 403) return 4 ;;
        *) return 1 ;;
    esac
}

# download() from the hub, with HF_TOKEN when set. The header reaches curl through a pipe (-H @file), so the
# token is on no command line that ps could show. curl sends a custom Authorization header to the host it
# was asked for only, not to the storage host the hub redirects big files to (curl 7.58 and later; 7.83 and
# later also hold it back from another port or scheme of the same host).
hub_download() {
    if [[ -n ${HF_TOKEN:-} ]]; then
        download "$@" --header @<(printf 'Authorization: Bearer %s\n' "$HF_TOKEN")
    else
        download "$@"
    fi
}

# A header of the responses that curl --dump-header saved (the first one wins), without quotes or W/.
header_of() {
    grep -i -m 1 "^$1:" "$2" | sed -e 's/^[^:]*: *//' -e 's/^W\///' | tr -d '"\r ' || true
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

# --- The work: make one model folder present, complete, and from one commit. ---

# The files that a folder must hold, one a line (the ? ones are not needed).
required_files() {
    local file
    local -a files
    read -r -a files <<<"$(folder_files_of "$1")" # read, not $(...) unquoted: no glob expansion of the ?
    for file in "${files[@]}"; do
        [[ $file == *\? ]] || echo "$file"
    done
}

# The required files that FOLDER lacks or holds empty, one a line; nothing when it is complete.
missing_files() {
    local folder=$1 model=$2 file
    while read -r file; do
        [[ -s $folder/$file ]] || echo "$file"
    done < <(required_files "$model")
}

licence_needed() {
    local repo=$1 why=$2
    die "$repo is gated ($why): accept its licence at https://huggingface.co/$repo (access is granted by hand and can take a while), then export HF_TOKEN=<a read token of that account> and run again."
}

fetch_folder() {
    local model=$1 repo folder target revision commit file optional status reason headers want have missing
    local -a files
    repo="$(repo_of "$model")"
    folder="$(file_of "$model")"
    target="$MODEL_DIR/$folder"

    if [[ -e $target ]]; then
        missing="$(missing_files "$target" "$model")"
        if [[ -z $missing ]]; then
            echo "$folder: already present with every file, kept as it is ($target; delete it to fetch again)"
            return 0
        fi
        # Not made by this script, which moves only complete folders into place: maybe a copy a user is making.
        die "$target exists but lacks ${missing//$'\n'/ }; it is left alone. Remove it and run again, or complete it yourself."
    fi
    if is_gated "$model" && [[ -z ${HF_TOKEN:-} ]]; then
        licence_needed "$repo" "HF_TOKEN is not set"
    fi

    # Same folder as the target, so the final mv is an atomic rename on one file system.
    PARTIAL_DIR="$(mktemp -d "$MODEL_DIR/.$folder.part.XXXXXX")"
    headers="$PARTIAL_DIR/.headers"
    revision=$HF_REVISION
    echo "fetching $repo ($(size_of "$model")) from ${HF_ENDPOINT%/} at $revision into $target"
    read -r -a files <<<"$(folder_files_of "$model")"
    for file in "${files[@]}"; do
        optional=""
        if [[ $file == *\? ]]; then
            file=${file%\?}
            optional=1
        fi
        echo "  $file"
        status=0
        reason="$(hub_download "$(hub_url_of "$repo" "$revision" "$file")" "$PARTIAL_DIR/$file" --dump-header "$headers")" || status=$?
        if [[ $status -eq 3 && -n $optional ]]; then
            rm -f -- "$PARTIAL_DIR/$file"
            echo "  $file: not in the repository; skipped (loading does not need it)"
            continue
        elif [[ $status -eq 4 ]] && is_gated "$model"; then
            licence_needed "$repo" "the hub refused the token: $reason"
        elif [[ $status -ne 0 ]]; then
            [[ $status -eq 4 && -n ${HF_TOKEN:-} ]] && reason="$reason; is HF_TOKEN valid?"
            die "could not download $repo/$file from $(hub_url_of "$repo" "$revision" "$file") ($reason). Put a copy of $repo at $target yourself or set $(setting_of "$model") to its path."
        fi

        # For a file kept in Git LFS (the weights) the hub names its SHA-256; small files carry a Git hash.
        want="$(header_of x-linked-etag "$headers")"
        if [[ $want =~ ^[0-9a-f]{64}$ ]]; then
            have="$(sha256_of "$PARTIAL_DIR/$file")"
            [[ $have == "$want" ]] ||
                die "$repo/$file has SHA-256 $have, but the hub names $want; discarded the folder (truncated download, or a mirror serving another file)."
        fi
        # Pin the commit that the revision pointed at, so that a push to it meanwhile cannot mix two versions.
        commit="$(header_of x-repo-commit "$headers")"
        if [[ $commit =~ ^[0-9a-f]{40}$ ]]; then revision=$commit; fi
    done

    rm -f -- "$headers"
    # mktemp makes both private; the server may run as another user.
    chmod 755 "$PARTIAL_DIR"
    chmod 644 "$PARTIAL_DIR"/*
    [[ ! -e $target ]] || die "$target appeared while downloading (another run?); left it alone."
    mv -- "$PARTIAL_DIR" "$target"
    PARTIAL_DIR=""
    echo "$folder: saved with every file ($target, revision $revision)"
    if [[ $model != sam2 && $model != sam3 ]]; then
        echo "$folder: to serve it, set SAM_CHOICE=SAM2 and $(setting_of "$model")=$folder"
    fi
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
            all) wanted+=("${ALL[@]}") ;;
            mobile_sam | vit_b | vit_l | vit_h | sam2 | sam2-small | sam2-base-plus | sam2-large | sam3) wanted+=("$arg") ;;
            *)
                echo "error: unknown model '$arg' (expected mobile_sam, vit_b, vit_l, vit_h, sam2, sam2-small, sam2-base-plus, sam2-large, sam3 or all; see --help)" >&2
                exit 2
                ;;
        esac
    done
    [[ ${#wanted[@]} -gt 0 ]] || wanted=(mobile_sam)

    local model checkpoints=""
    for model in "${wanted[@]}"; do
        [[ -n $(repo_of "$model") ]] || checkpoints=1
    done
    command -v curl >/dev/null 2>&1 || die "curl is needed to download models; install it or put the files in $MODEL_DIR yourself."
    [[ -z $checkpoints || -r $MANIFEST ]] || die "checksum list $MANIFEST is missing; it belongs beside this script."
    mkdir -p -- "$MODEL_DIR" 2>/dev/null && [[ -w $MODEL_DIR ]] ||
        die "cannot write to $MODEL_DIR (a volume owned by another user?); fix its permissions or set MODEL_DIR."
    # A missing token stops the run before anything is downloaded, not after the models named before sam3.
    for model in "${wanted[@]}"; do
        if is_gated "$model" && [[ -z ${HF_TOKEN:-} && ! -d $MODEL_DIR/$(file_of "$model") ]]; then
            licence_needed "$(repo_of "$model")" "HF_TOKEN is not set"
        fi
    done

    for model in "${wanted[@]}"; do
        if [[ -n $(repo_of "$model") ]]; then fetch_folder "$model"; else fetch "$model"; fi
    done
}

main "$@"
