"""Hugging Face SAM 2.1 and SAM 3 model folders with seeded random weights, laid out like the hub repos.

`size="tiny"` folders (< 200k parameters per model) load and run in milliseconds for tests; `size="real"` folders
have the published architecture sizes (facebook/sam2.1-hiera-tiny, facebook/sam3) for benchmarks. Nothing is
downloaded: the SAM 3 processor's CLIP tokenizer is a small BPE built in code.
"""

from pathlib import Path

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTokenizer,
    Sam2Config,
    Sam2ImageProcessor,
    Sam2Model,
    Sam2Processor,
    Sam3ImageProcessor,
    Sam3Processor,
    Sam3VideoConfig,
    Sam3VideoModel,
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


def _sam3_config(size: str) -> Sam3VideoConfig:
    _check_size(size)
    if size == "real":
        return Sam3VideoConfig()  # the transformers defaults are facebook/sam3
    image, dim, grid = SAM3_TINY_IMAGE, 16, SAM3_TINY_IMAGE // SAM3_PATCH
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
        "detr_decoder_config": {**small, "num_layers": 1, "num_queries": 16, "initializer_range": SCORE_INIT},
        "mask_decoder_config": {"hidden_size": dim, "num_attention_heads": 2},
        "initializer_range": SCORE_INIT,
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
        "memory_encoder_output_channels": 8,
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


def save_sam3_folder(folder: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a seeded random Sam3VideoModel checkpoint + Sam3Processor folder laid out like facebook/sam3, from
    which Sam3Model, Sam3Processor, Sam3TrackerModel and Sam3TrackerProcessor all load, as from the real one."""
    config = _sam3_config(size)
    torch.manual_seed(seed)
    # save_original_format=False keeps the native detector_model./tracker_model./tracker_neck. keys of the hub
    # checkpoint; the default "revert" of the sam3_tracker renaming would nest them as tracker_model.tracker_model.
    Sam3VideoModel(config).save_pretrained(folder, save_original_format=False)
    image = config.image_size
    image_processor = Sam3ImageProcessor(**_image_sizes(image, 4 * image // SAM3_PATCH))
    tokenizer = _tokenizer(config.detector_config.text_config.vocab_size)
    Sam3Processor(image_processor, tokenizer).save_pretrained(folder)
    return Path(folder)
