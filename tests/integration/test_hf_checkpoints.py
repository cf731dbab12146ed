"""The tiny random SAM 2.1 / SAM 3 folders load offline through every class a hub folder serves, with their weights."""

import huggingface_hub
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    Sam2Model,
    Sam2Processor,
    Sam3Model,
    Sam3Processor,
    Sam3TrackerModel,
    Sam3TrackerProcessor,
)

from tests.support.hf_checkpoints import SAM2_TINY_IMAGE, SAM3_TINY_IMAGE, WORDS, save_sam2_folder, save_sam3_folder

TINY_PARAMETERS = 200_000


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1, even if huggingface_hub read the environment before this module was imported."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def sam2_folder(tmp_path_factory):
    return save_sam2_folder(tmp_path_factory.mktemp("hf") / "sam2.1-hiera-tiny")


@pytest.fixture(scope="module")
def sam3_folder(tmp_path_factory):
    return save_sam3_folder(tmp_path_factory.mktemp("hf") / "sam3")


def load(cls, folder):
    """The model, after checking that every one of its weights came from the folder."""
    model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    assert info["missing_keys"] == set() and not info["mismatched_keys"] and not info["error_msgs"]
    assert info["unexpected_keys"] == set()  # the rest of the checkpoint is on the ignore lists
    return model.eval()


def file_key(cls, key: str) -> str:
    """Where a model's weight lives in the hub layout (a Sam3VideoModel checkpoint for SAM 3)."""
    if cls is Sam3Model:
        return "detector_model." + key
    if cls is Sam3TrackerModel:
        if key.startswith("vision_encoder.backbone."):
            return "detector_model." + key
        if key.startswith("vision_encoder.neck."):
            return key.replace("vision_encoder.neck.", "tracker_neck.", 1)
        return "tracker_model." + key
    return key


@pytest.mark.parametrize("cls", [Sam2Model, Sam3Model, Sam3TrackerModel])
def test_every_weight_round_trips_and_the_model_is_tiny(cls, sam2_folder, sam3_folder):
    folder = sam2_folder if cls is Sam2Model else sam3_folder
    model = load(cls, folder)
    saved = load_file(folder / "model.safetensors")
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[file_key(cls, key)]), key
    assert sum(p.numel() for p in model.parameters()) < TINY_PARAMETERS


@pytest.mark.parametrize("cls,folder,size", [(Sam2Processor, "sam2_folder", SAM2_TINY_IMAGE),
                                             (Sam3Processor, "sam3_folder", SAM3_TINY_IMAGE),
                                             (Sam3TrackerProcessor, "sam3_folder", SAM3_TINY_IMAGE)])
def test_processors_load_with_the_tiny_image_size(cls, folder, size, request):
    processor = cls.from_pretrained(request.getfixturevalue(folder), local_files_only=True)
    assert processor.image_processor.size == {"height": size, "width": size}
    assert processor.target_size == size


def test_the_tokenizer_works_offline_and_fits_the_text_model(sam3_folder):
    processor = Sam3Processor.from_pretrained(sam3_folder, local_files_only=True)
    tokenizer = processor.tokenizer
    ids = processor(text="person")["input_ids"]
    assert len(ids) == 32 and ids[:3] == [tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("person</w>"),
                                          tokenizer.eos_token_id]
    assert all(len(tokenizer(word)["input_ids"]) == 3 for word in WORDS)
    assert tokenizer.decode(tokenizer("A red car, 2 dogs!")["input_ids"], skip_special_tokens=True) == \
        "a red car , 2 dogs !"
    text_config = AutoConfig.from_pretrained(sam3_folder, local_files_only=True).detector_config.text_config
    assert len(tokenizer) == text_config.vocab_size and tokenizer.eos_token_id == text_config.eos_token_id


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, sam2_folder):
    again = load_file(save_sam2_folder(tmp_path / "again") / "model.safetensors")
    other = load_file(save_sam2_folder(tmp_path / "other", seed=1) / "model.safetensors")
    saved = load_file(sam2_folder / "model.safetensors")
    assert all(torch.equal(saved[k], again[k]) for k in saved)
    assert not all(torch.equal(saved[k], other[k]) for k in saved)


def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)


def test_random_text_prompt_instances_are_neither_empty_nor_full_and_scores_spread(sam3_folder):
    model, processor = load(Sam3Model, sam3_folder), Sam3Processor.from_pretrained(sam3_folder, local_files_only=True)
    inputs = processor(images=image(), text="person", return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    found = processor.post_process_instance_segmentation(outputs, threshold=0.0, mask_threshold=0.5,
                                                         target_sizes=inputs["original_sizes"].tolist())[0]
    fill = found["masks"].float().mean(dim=(1, 2))
    assert len(fill) == model.config.detr_decoder_config.num_queries
    assert ((fill > 0) & (fill < 1)).all()
    assert found["scores"].max() - found["scores"].min() > 0.1


@pytest.mark.parametrize("model_cls,processor_cls", [(Sam2Model, Sam2Processor),
                                                     (Sam3TrackerModel, Sam3TrackerProcessor)])
def test_random_point_prompt_mask_is_neither_empty_nor_full(model_cls, processor_cls, sam2_folder, sam3_folder):
    folder = sam2_folder if model_cls is Sam2Model else sam3_folder
    model, processor = load(model_cls, folder), processor_cls.from_pretrained(folder, local_files_only=True)
    inputs = processor(images=image(), input_points=[[[[40, 32]]]], input_labels=[[[1]]], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs, multimask_output=False)
    fill = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"])[0].float().mean().item()
    assert 0 < fill < 1
