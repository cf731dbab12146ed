"""Hugging Face SAM 2.1 and SAM 3 model folders with seeded random weights, laid out like the hub repos.

`size="tiny"` folders (< 200k parameters per model) load and run in milliseconds for tests; `size="real"` folders
have the published architecture sizes (facebook/sam2.1-hiera-tiny, facebook/sam3) for benchmarks. Nothing is
downloaded: the SAM 3 processor's CLIP tokenizer is a small BPE built in code.
"""

from pathlib import Path

import numpy as np
import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTokenizer,
    Sam2Config,
    Sam2ImageProcessor,
    Sam2Model,
    Sam2Processor,
    Sam2VideoConfig,
    Sam2VideoModel,
    Sam2VideoProcessor,
    Sam2VideoVideoProcessor,
    Sam3ImageProcessor,
    Sam3Processor,
    Sam3VideoConfig,
    Sam3VideoModel,
    Sam3VideoProcessor,
)

SIZES = ("tiny", "real")
SAM2_TINY_IMAGE = 128  # Hiera: patch stride 4 then three 2x poolings -> 32, 16, 8, 4 feature maps
SAM3_TINY_IMAGE = 112  # ViT patch 14 -> an 8x8 grid: two 4x4 windows a side, like 1008 -> 72 = 3 windows of 24
SAM3_PATCH = 14
TINY_VOCAB = 576
# Byte symbols alone spell any text; these words also get whole-word tokens, as in the real CLIP vocabulary.
WORDS = ("person", "people", "car", "dog", "cat", "bird", "tree", "road", "sky", "red", "the")
# Init std of the tiny SAM 3 detector's scoring parts (DETR decoder, presence and dot-product heads). With the
# default 0.02 every instance scores 0.25 +- 0.002; with 0.35 seed 0's scores spread over ~0.1-0.45.
SCORE_INIT = 0.35


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")


def _sam2_config(size: str) -> Sam2Config:
    _check_size(size)
    if size == "real":
        return Sam2Config()  # the transformers defaults are facebook/sam2.1-hiera-tiny
    image, dim = SAM2_TINY_IMAGE, 32
    return Sam2Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "image_size": [image, image],
                "hidden_size": 8,
                "blocks_per_stage": [1, 1, 2, 1],
                "embed_dim_per_stage": [8, 16, 32, 64],
                "num_attention_heads_per_stage": [1, 1, 1, 1],
                "window_size_per_stage": [8, 4, 4, 4],
                "global_attention_blocks": [3],  # never the first (pooling) block of a stage
                "window_positional_embedding_background_size": [4, 4],
                "mlp_ratio": 2.0,
            },
            "backbone_channel_list": [64, 32, 16, 8],
            "backbone_feature_sizes": [[image // 4] * 2, [image // 8] * 2, [image // 16] * 2],
            "fpn_hidden_size": dim,
        },
        prompt_encoder_config={"hidden_size": dim, "image_size": image, "mask_input_channels": 4},
        mask_decoder_config={
            "hidden_size": dim,
            "mlp_dim": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
    )


def _sam3_config(size: str, dim: int = 16, score_init: float = SCORE_INIT) -> Sam3VideoConfig:
    """SAM 3's config; tiny ones are `dim` wide (the tracker's video memory needs dim > 64, see
    `_sam2_video_config`), their scoring parts initialised with std `score_init`."""
    _check_size(size)
    if size == "real":
        return Sam3VideoConfig()  # the transformers defaults are facebook/sam3
    image, grid = SAM3_TINY_IMAGE, SAM3_TINY_IMAGE // SAM3_PATCH
    memory = 64 if dim > 64 else dim // 2
    vision = {  # shared: the tracker reuses the detector's ViT, with its own neck (tracker_neck)
        "backbone_config": {
            "model_type": "sam3_vit_model",
            "hidden_size": dim,
            "intermediate_size": 2 * dim,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image,
            "patch_size": SAM3_PATCH,
            "window_size": grid // 2,
            "global_attn_indexes": [1],
            "pretrain_image_size": SAM3_PATCH * grid // 2,  # position embeddings tiled over the grid
        },
        "fpn_hidden_size": dim,
        "backbone_feature_sizes": [[4 * grid] * 2, [2 * grid] * 2, [grid] * 2],
    }
    small = {"hidden_size": dim, "num_attention_heads": 2, "intermediate_size": 2 * dim}
    detector = {
        "vision_config": vision,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": TINY_VOCAB,
            "bos_token_id": TINY_VOCAB - 2,
            "eos_token_id": TINY_VOCAB - 1,
            "hidden_size": dim,
            "intermediate_size": 2 * dim,
            "projection_dim": dim,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
        },
        "geometry_encoder_config": {**small, "num_layers": 1, "roi_size": 2},
        "detr_encoder_config": {**small, "num_layers": 1},
        "detr_decoder_config": {**small, "num_layers": 1, "num_queries": 16, "initializer_range": score_init},
        "mask_decoder_config": {"hidden_size": dim, "num_attention_heads": 2},
        "initializer_range": score_init,
    }
    tracker = {
        "vision_config": vision,
        "image_size": image,
        "prompt_encoder_config": {"hidden_size": dim, "image_size": image, "mask_input_channels": 4},
        "mask_decoder_config": {
            "hidden_size": dim,
            "mlp_dim": 2 * dim,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": dim,
        },
        "num_maskmem": 2,
        "max_object_pointers_in_encoder": 2,
        "memory_attention_hidden_size": dim,
        "memory_attention_num_layers": 1,
        "memory_attention_feed_forward_hidden_size": 2 * dim,
        "memory_encoder_hidden_size": dim,
        "memory_encoder_output_channels": memory,
        "mask_downsampler_embed_dim": dim,
        "mask_downsampler_stride": 4,  # same total stride 16 in two steps instead of four
        "memory_fuser_embed_dim": dim,
        "memory_fuser_intermediate_dim": 2 * dim,
    }
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker, low_res_mask_size=4 * grid)


def _tokenizer(vocab_size: int) -> CLIPTokenizer:
    """A CLIP BPE tokenizer laid out like the real CLIP vocabulary: the 256 byte symbols, the same with the
    end-of-word suffix, merges (here only spelling WORDS), unused entries up to `vocab_size`, then the special
    tokens last (<|startoftext|> 49406, <|endoftext|> 49407 at the real size)."""
    symbols = sorted(ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(symbols + [s + "</w>" for s in symbols])}
    merges = []
    for word in WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    while len(vocab) < vocab_size - 2:
        vocab[f"<|unused{len(vocab)}|>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)))


def _image_sizes(image: int, mask: int) -> dict:
    return {"size": {"height": image, "width": image}, "mask_size": {"height": mask, "width": mask}}


def save_sam2_folder(folder: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a seeded random Sam2Model + Sam2Processor folder laid out like facebook/sam2.1-hiera-tiny, so tests
    load it through `Sam2Model/Sam2Processor.from_pretrained(folder, local_files_only=True)` like a real one."""
    config = _sam2_config(size)
    torch.manual_seed(seed)
    Sam2Model(config).save_pretrained(folder)
    image = config.prompt_encoder_config.image_size
    Sam2Processor(Sam2ImageProcessor(**_image_sizes(image, image // 4))).save_pretrained(folder)
    return Path(folder)


def save_sam3_folder(folder: Path, size: str = "tiny", seed: int = 0, dim: int = 16,
                     object_score_bias: float = 0.0, score_init: float = SCORE_INIT) -> Path:
    """Save a seeded random Sam3VideoModel checkpoint + Sam3Processor folder laid out like facebook/sam3, from
    which Sam3Model, Sam3Processor, Sam3TrackerModel, Sam3TrackerProcessor and the video models and
    processors (Sam3TrackerVideoModel, Sam3VideoModel) all load, as from the real one. Tracking through a video
    needs a tiny folder at least `dim=128` wide; `object_score_bias` keeps its tracker's objects found (see
    `save_sam2_video_folder`); wider folders need a smaller `score_init` for their detector's scores to spread
    (at the default a 128-wide detector scores every candidate 0)."""
    config = _sam3_config(size, dim, score_init)
    torch.manual_seed(seed)
    # save_original_format=False keeps the native detector_model./tracker_model./tracker_neck. keys of the hub
    # checkpoint; the default "revert" of the sam3_tracker renaming would nest them as tracker_model.tracker_model.
    model = Sam3VideoModel(config)
    if object_score_bias:
        with torch.no_grad():
            model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias += object_score_bias
    model.save_pretrained(folder, save_original_format=False)
    image = config.image_size
    image_processor = Sam3ImageProcessor(**_image_sizes(image, 4 * image // SAM3_PATCH))
    tokenizer = _tokenizer(config.detector_config.text_config.vocab_size)
    Sam3Processor(image_processor, tokenizer).save_pretrained(folder)
    # The hub folder also holds the video preprocessor the SAM 3 video processors load with.
    Sam2VideoVideoProcessor(**_image_sizes(image, 4 * image // SAM3_PATCH)).save_pretrained(folder)
    return Path(folder)


def _sam2_video_config(size: str) -> Sam2VideoConfig:
    """The SAM 2.1 video model config (model_type sam2_video, as facebook/sam2.1-hiera-* hold), tiny or real."""
    _check_size(size)
    if size == "real":
        return Sam2VideoConfig()  # the transformers defaults are facebook/sam2.1-hiera-tiny
    # Its memory attention reads 64 channels of memory whatever the config, and splits each object pointer
    # (hidden wide) into hidden / 64 tokens, which fails unless hidden > 64: the tiny tracker is 128 wide and
    # keeps 64-channel memories, where the tiny image model is 32 wide.
    image, dim, memory = _sam2_config("tiny"), 128, 64
    vision = image.vision_config.to_dict() | {"fpn_hidden_size": dim}
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=image.prompt_encoder_config.to_dict() | {"hidden_size": dim},
        mask_decoder_config=image.mask_decoder_config.to_dict() | {"hidden_size": dim},
        image_size=SAM2_TINY_IMAGE,
        memory_attention_hidden_size=dim,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=2 * dim,
        memory_attention_rope_feat_sizes=[SAM2_TINY_IMAGE // 16] * 2,
        memory_encoder_hidden_size=dim,
        memory_encoder_output_channels=memory,
        mask_downsampler_embed_dim=dim,
        memory_fuser_embed_dim=dim,
        memory_fuser_intermediate_dim=2 * dim,
    )


def save_sam2_video_folder(folder: Path, size: str = "tiny", seed: int = 0, object_score_bias: float = 0.0) -> Path:
    """Save a seeded random Sam2VideoModel + Sam2VideoProcessor folder laid out like facebook/sam2.1-hiera-tiny
    (model_type sam2_video), from which Sam2Model (clicks) and Sam2VideoModel (tracking) both load.

    `object_score_bias` is added to the bias of the object-score head's last layer: random weights score every
    object about -1 after the first frame (lost, empty masks); a positive bias keeps objects found."""
    config = _sam2_video_config(size)
    torch.manual_seed(seed)
    model = Sam2VideoModel(config)
    if object_score_bias:
        with torch.no_grad():
            model.mask_decoder.pred_obj_score_head.proj_out.bias += object_score_bias
    model.save_pretrained(folder)
    image = config.image_size
    sizes = _image_sizes(image, image // 4)
    Sam2VideoProcessor(Sam2ImageProcessor(**sizes), Sam2VideoVideoProcessor(**sizes)).save_pretrained(folder)
    return Path(folder)


def _probe_into_decoder(decoder: torch.nn.Module, features: torch.Tensor, masks: np.ndarray) -> float:
    """Fit a least-squares linear probe on `features` (frames×C×h×w, the decoder's finest skip input) to
    `masks` (frames×H×W bool) and make it the decoder's whole answer: its skip convolution computes the probe,
    the other paths are cut. Returns the probe's pixel accuracy on the h×w grid."""
    count, channels, height, width = features.shape
    targets = torch.nn.functional.interpolate(torch.as_tensor(masks[:, None], dtype=torch.float32),
                                              size=(height, width), mode="area")[:, 0] > 0.5
    inputs = torch.cat([features.permute(0, 2, 3, 1).reshape(-1, channels), torch.ones(count * height * width, 1)], 1)
    wanted = targets.reshape(-1, 1).float() * 2 - 1
    ridge = 1e-3 * torch.eye(channels + 1)
    solution = torch.linalg.solve(inputs.T @ inputs + ridge, inputs.T @ wanted)[:, 0]
    accuracy = float(((inputs @ solution > 0) == targets.reshape(-1)).float().mean())
    with torch.no_grad():
        decoder.conv_s0.weight.zero_()
        decoder.conv_s0.bias.zero_()
        decoder.conv_s0.weight[0, :, 0, 0] = 10 * solution[:-1]
        decoder.conv_s0.bias[0] = 10 * solution[-1]
        decoder.upscale_conv2.weight.zero_()
        decoder.upscale_conv2.bias.zero_()
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.zero_()
            mlp.proj_out.bias.zero_()
            mlp.proj_out.bias[0] = 1.0
    return accuracy


def locate_sam3_video_masks(folder: Path, frames: np.ndarray, masks: np.ndarray) -> float:
    """`locate_sam2_video_masks` for a SAM 3 folder: the tracker's masks (every frame after an instance's
    first) become a linear probe on the tracker neck's finest features, fitted to `masks`. The detector is
    untouched: it still finds instances (with random masks on the frame it finds them), and the tracker then
    follows what the probe sees. Returns the probe's pixel accuracy on the low-res grid."""
    model = Sam3VideoModel.from_pretrained(folder, local_files_only=True).eval()
    processor = Sam3VideoProcessor.from_pretrained(folder, local_files_only=True)
    pixels = processor.video_processor(videos=[frames], return_tensors="pt").pixel_values_videos[0]
    with torch.no_grad():
        hidden = model.detector_model.get_vision_features(pixel_values=pixels).last_hidden_state
        height, width = model.tracker_model.prompt_encoder.image_embedding_size
        spatial = hidden.view(hidden.shape[0], height, width, -1).permute(0, 3, 1, 2)
        features = model.tracker_neck(spatial)[0][0]  # frames×C×h×w, before the decoder's conv_s0
    accuracy = _probe_into_decoder(model.tracker_model.mask_decoder, features, masks)
    model.save_pretrained(folder, save_original_format=False)
    return accuracy


def locate_sam2_video_masks(folder: Path, frames: np.ndarray, masks: np.ndarray) -> float:
    """Make a random-weight Sam2VideoModel folder's masks located: every mask becomes the pixels a linear probe
    on the backbone's finest features (the decoder's skip connection, which memory attention does not touch)
    finds to be foreground, fitted by least squares to `masks` (frames×H×W bool) on `frames` (frames×H×W×3
    uint8). The decoder's other paths are cut: masks then follow the image, not the prompt, which is enough to
    make every frame's mask a small located region. Returns the probe's pixel accuracy on the low-res grid."""
    model = Sam2VideoModel.from_pretrained(folder, local_files_only=True).eval()
    processor = Sam2VideoProcessor.from_pretrained(folder, local_files_only=True)
    pixels = processor.video_processor(videos=[frames], return_tensors="pt").pixel_values_videos[0]
    with torch.no_grad():
        features = model.vision_encoder(pixels).fpn_hidden_states[0]  # frames×C×h×w
    accuracy = _probe_into_decoder(model.mask_decoder, features, masks)
    model.save_pretrained(folder)
    return accuracy


def set_sam3_video_config(folder: Path, **values: float) -> None:
    """Write values of SAM 3's video config (`score_threshold_detection`, `new_det_thresh`, `assoc_iou_thresh`,
    ...) into the folder's config.json, where `Sam3VideoModel.from_pretrained` reads them."""
    config = Sam3VideoConfig.from_pretrained(folder)
    for name, value in values.items():
        setattr(config, name, value)
    config.save_pretrained(folder)


def save_sam3_concept_video_folder(folder: Path, frames: np.ndarray, truth: np.ndarray, phrases: list[str]) -> Path:
    """A tiny SAM 3 folder whose video model finds and keeps instances of `phrases` in `frames`, with tracked
    masks located on `truth` (frames×H×W bool).

    Random weights score every candidate below the published thresholds (0.5 to keep a detection, 0.7 to start
    an instance): both are set at the upper quartile of the image detector's scores for the phrases on the
    first frame. Random tracked masks are speckle over the whole frame (every box the frame itself), so the
    tracker's masks are a linear probe fitted to `truth`. The detector's masks stay speckle, which no located
    track overlaps by the published association IoU (0.1, 0.5): every track would be dropped as unmatched and
    every detection start a new instance, so the association thresholds are 0 (any overlap matches).
    """
    from tests.support.sam3_reference import concept_reference

    save_sam3_folder(folder, dim=128, object_score_bias=4.0, score_init=0.1)
    scores = [score for phrase in phrases for score, _ in concept_reference(folder, frames[0], phrase, 0.0)]
    threshold = float(np.quantile(scores, 0.75))
    set_sam3_video_config(folder, score_threshold_detection=threshold, new_det_thresh=threshold,
                          assoc_iou_thresh=0.0, trk_assoc_iou_thresh=0.0)
    accuracy = locate_sam3_video_masks(folder, frames, truth)
    if accuracy < 0.95:
        raise RuntimeError(f"the tracker's probe fits the truth at {accuracy:.3f} only")
    return Path(folder)
