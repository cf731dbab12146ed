"""The ONNX path: the converter's CLI, parity with the torch path on every prompt and image size, torch-free serving.

The random-weight MobileSAM is exported once per session (decoder, encoder and int8 copies) through the
converter's own command line; every test reuses those files.
"""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests
from PIL import Image

from sam_ls_backend.errors import ConfigError
from sam_ls_backend.predictors import onnx_convert as onnx_converter
from sam_ls_backend.predictors import onnx_export
from sam_ls_backend.predictors.onnx_graph import DECODER_GRAPH, WEIGHTS_KEY
from sam_ls_backend.predictors.onnx_runtime import OnnxSamPredictor, open_graph, preprocess
from sam_ls_backend.predictors.registry import load_predictor
from sam_ls_backend.protocol.prompts import prompts_from_regions
from tests.support.backend_process import BackendProcess
from tests.support.ls_bodies import keypoint, predict_body, rectangle
from tests.support.reference import decode_brush_region, reference_mask
from tests.support.scenes import scene

ROOT = Path(__file__).resolve().parents[2]

SIZES = [(1024, 768), (700, 1500), (4000, 3000), (333, 517)]  # width × height

# Smart regions as Label Studio sends them (percent), grouped into prompts by the backend's own rules.
REGIONS = {
    "one click": [keypoint(50, 50)],
    "clicks positive and negative": [keypoint(30, 40), keypoint(70, 60, False), keypoint(35, 45)],
    "negative click only": [keypoint(60, 60, False)],
    "box": [rectangle(20, 10, 50, 60)],
    "box with clicks inside": [rectangle(20, 10, 50, 60), keypoint(40, 40), keypoint(60, 20, False)],
    "several boxes": [rectangle(5, 5, 30, 30), rectangle(40, 20, 25, 50), rectangle(70, 60, 25, 35)],
    "boxes and a negative click outside": [rectangle(5, 5, 40, 40), rectangle(50, 50, 40, 40),
                                           keypoint(48, 48, False)],
}
TORCH_STACK = {"torch", "torchvision", "segment-anything", "mobilesam-mirror", "timm", "onnx", "transformers", "av"}


@dataclass(frozen=True)
class Export:
    exit_code: int
    output: str
    folder: Path

    def file(self, kind: str) -> Path:
        return self.folder / f"mobile_sam.{kind}.onnx"


@pytest.fixture(scope="session")
def export(vit_t_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Export:
    """The converter run once, as a user runs it, with the encoder and int8 copies."""
    folder = tmp_path_factory.mktemp("onnx")
    output = io.StringIO()
    with redirect_stdout(output):
        code = onnx_converter.main(["--checkpoint", str(vit_t_checkpoint), "--output-dir", str(folder),
                                    "--encoder", "--quantize"])
    return Export(code, output.getvalue(), folder)


@pytest.fixture(scope="session")
def onnx_settings(export: Export, vit_t_settings):
    return vit_t_settings.with_overrides(sam_choice="ONNX", onnx_decoder=str(export.file("decoder")),
                                         onnx_encoder=str(export.file("encoder")))


@pytest.fixture(scope="session")
def onnx_predictor(onnx_settings):
    return load_predictor(onnx_settings)


@pytest.fixture(scope="session")
def embedded(vit_t_predictor, onnx_predictor):
    """Per image size: the image, and its torch and ONNX embeddings (each encoder runs once per size)."""
    done: dict[tuple[int, int], tuple] = {}

    def embed(size: tuple[int, int]):
        if size not in done:
            image = scene(*size, seed=size[0])
            done[size] = image, vit_t_predictor.embed(image), onnx_predictor.embed(image)
        return done[size]

    return embed


def test_converter_writes_validated_graphs_and_reports_the_int8_cost(export):
    assert export.exit_code == 0, export.output
    assert sorted(path.name for path in export.folder.iterdir()) == [
        "mobile_sam.decoder.int8.onnx", "mobile_sam.decoder.onnx", "mobile_sam.encoder.int8.onnx",
        "mobile_sam.encoder.onnx"]  # no staging leftovers
    assert (f"serve with: SAM_CHOICE=ONNX ONNX_DECODER={export.file('decoder')} "
            f"ONNX_ENCODER={export.file('encoder')}") in export.output
    for graph in ("prompt-decoder", "image-encoder"):
        fp32 = re.search(rf"{graph} fp32: mask IoU against torch ([0-9.]+)", export.output)
        int8 = re.search(rf"{graph} int8: mask IoU against torch ([0-9.]+) .*the cost of int8", export.output)
        assert fp32 and float(fp32.group(1)) >= 0.99, export.output
        assert int8 and 0.5 < float(int8.group(1)) <= 1.0, export.output


@pytest.mark.parametrize("kind", REGIONS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_masks_agree_with_the_torch_path(size, kind, embedded, vit_t_predictor, onnx_predictor):
    image, torch_embedding, onnx_embedding = embedded(size)
    prompts = prompts_from_regions(REGIONS[kind])
    for prompt in prompts:
        expected = vit_t_predictor.predict(torch_embedding, prompt)
        ours = onnx_predictor.predict(onnx_embedding, prompt)
        assert ours.mask.shape == (size[1], size[0]) and ours.mask.dtype == bool
        assert 0 < expected.mask.sum() < expected.mask.size, "a degenerate reference mask would prove nothing"
        assert onnx_converter.mask_iou(ours.mask, expected.mask) >= 0.99
        assert ours.score == pytest.approx(expected.score, abs=2e-3)
        assert ours.low_res_logits.shape == (256, 256)


@pytest.mark.parametrize("size", [(1024, 768), (333, 517)], ids=["landscape", "portrait-odd"])
def test_refinement_with_the_previous_answer_agrees_with_the_torch_path(size, embedded, vit_t_predictor,
                                                                         onnx_predictor):
    """A second click refines the first answer (its logits as SAM's mask_input), in both paths alike."""
    _, torch_embedding, onnx_embedding = embedded(size)
    (first,) = prompts_from_regions([keypoint(50, 50)])
    (second,) = prompts_from_regions([keypoint(50, 50), keypoint(30, 70, False)])
    previous = vit_t_predictor.predict(torch_embedding, first).low_res_logits
    expected = vit_t_predictor.predict(torch_embedding, second, previous).mask
    unrefined = vit_t_predictor.predict(torch_embedding, second).mask
    assert onnx_converter.mask_iou(expected, unrefined) < 0.99, "the mask_input must matter to prove anything"
    (ours,) = onnx_predictor.predict_batch(onnx_embedding, [second], [previous])
    assert onnx_converter.mask_iou(ours.mask, expected) >= 0.99


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_preprocessing_is_sam_predictors_to_the_bit(size, vit_t_predictor):
    import torch
    from segment_anything.utils.transforms import ResizeLongestSide

    image = scene(*size, seed=1)
    resized = ResizeLongestSide(1024).apply_image(image)
    expected = vit_t_predictor.model.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None]).numpy()
    pixels, input_size = preprocess(image)
    assert input_size == resized.shape[:2]
    np.testing.assert_array_equal(pixels, expected)


def test_float16_embedding_from_the_cache_decodes_the_same_object(embedded, onnx_predictor):
    _, _, embedding = embedded((1024, 768))
    compact = replace(embedding, features=embedding.features.astype(np.float16))
    (prompt,) = prompts_from_regions(REGIONS["box with clicks inside"])
    full, half = onnx_predictor.predict(embedding, prompt), onnx_predictor.predict(compact, prompt)
    assert onnx_converter.mask_iou(half.mask, full.mask) >= 0.99


def test_concurrent_clicks_on_different_images_keep_their_own_masks(embedded, onnx_predictor):
    kinds = ("one click", "box", "box with clicks inside")
    work = [(embedded(size)[2], prompt) for size in [(1024, 768), (333, 517)]
            for kind in kinds for prompt in prompts_from_regions(REGIONS[kind])]
    expected = [onnx_predictor.predict(embedding, prompt).mask for embedding, prompt in work]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda item: onnx_predictor.predict(*item).mask, work * 3))
    for index, mask in enumerate(answers):
        np.testing.assert_array_equal(mask, expected[index % len(work)])


def test_torch_encoder_serves_the_decoder_when_no_onnx_encoder_is_set(onnx_settings, embedded, vit_t_predictor):
    predictor = load_predictor(onnx_settings.with_overrides(onnx_encoder=""))
    image, torch_embedding, _ = embedded((333, 517))
    embedding = predictor.embed(image)
    assert isinstance(embedding.features, np.ndarray)
    (prompt,) = prompts_from_regions(REGIONS["clicks positive and negative"])
    expected = vit_t_predictor.predict(torch_embedding, prompt)
    assert onnx_converter.mask_iou(predictor.predict(embedding, prompt).mask, expected.mask) >= 0.99


def test_int8_decoder_is_served_like_the_fp32_one(onnx_settings, embedded, vit_t_predictor):
    predictor = load_predictor(onnx_settings.with_overrides(onnx_decoder=onnx_settings.onnx_decoder.replace(
        ".decoder.onnx", ".decoder.int8.onnx")))
    _, torch_embedding, onnx_embedding = embedded((1024, 768))
    (prompt,) = prompts_from_regions(REGIONS["box"])
    expected = vit_t_predictor.predict(torch_embedding, prompt)
    assert onnx_converter.mask_iou(predictor.predict(onnx_embedding, prompt).mask, expected.mask) >= 0.9


def test_server_with_onnx_encoder_never_loads_torch_and_stops_cleanly(export, tmp_path, vit_t_checkpoint):
    image = scene(320, 240, seed=11)
    url = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()
    regions = [rectangle(5, 5, 30, 30, label="A"), rectangle(40, 20, 25, 50, label="B"), keypoint(90, 90)]
    env = {"SAM_CHOICE": "ONNX", "ONNX_DECODER": str(export.file("decoder")),
           "ONNX_ENCODER": str(export.file("encoder")), "MOBILESAM_CHECKPOINT": str(tmp_path / "absent.pt"),
           "LABEL_STUDIO_URL": "http://127.0.0.1:9", "REDIS_URL": "", "WORKERS": "1"}
    server = BackendProcess(env, log_path=tmp_path / "server.log").wait_ready()
    try:
        body = predict_body(url, regions)  # a region's label is one its control has: give the config A and B
        body["label_config"] = body["label_config"].replace(
            '<Label value="Foreground"/></BrushLabels>',
            '<Label value="Foreground"/><Label value="A"/><Label value="B"/></BrushLabels>')
        response = requests.post(f"{server.url}/predict", json=body, timeout=120)
        torch_in_server = torch_files_mapped(process_tree(server.process.pid))
    finally:
        exit_code = server.stop()
    log = (tmp_path / "server.log").read_text()
    assert response.status_code == 200, log
    assert exit_code == 0 and "SIGABRT" not in log, log  # workers must exit cleanly too
    assert torch_files_mapped([os.getpid()]), "the probe must see torch where it is loaded (this test process)"
    assert torch_in_server == set()
    answers = response.json()["results"][0]["result"]
    assert [region["value"]["brushlabels"] for region in answers] == [["A"], ["B"], ["Foreground"]]
    expected, _ = reference_mask(vit_t_checkpoint, image, box=np.array([16.0, 12.0, 112.0, 84.0]))
    assert onnx_converter.mask_iou(decode_brush_region(answers[0]), expected) >= 0.99


def test_converter_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as stop:
        onnx_converter.main(["--help"])
    assert stop.value.code == 0
    shown = capsys.readouterr().out
    for option in ("--checkpoint", "--output-dir", "--encoder", "--quantize", "--sample"):
        assert option in shown


def test_converter_refuses_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    missing = tmp_path / "nowhere.pt"
    assert onnx_converter.main(["--checkpoint", str(missing)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: checkpoint not found: {missing}"]


def test_export_whose_masks_ignore_the_padding_is_refused_and_writes_nothing(vit_t_checkpoint, tmp_path,
                                                                             monkeypatch, capsys):
    """The Label Studio tutorial's failure (masks shifted on other image sizes) must stop the export."""
    from torch.nn import functional as F

    def upscale_over_the_padding(self, low_res, input_size, original_size):
        masks = F.interpolate(low_res, (input_size[0], input_size[1]), mode="bilinear", align_corners=False)
        return F.interpolate(masks, (original_size[0], original_size[1]), mode="bilinear", align_corners=False)

    monkeypatch.setattr(onnx_export.PromptGraph, "upscale", upscale_over_the_padding)
    folder = tmp_path / "out"
    assert onnx_converter.main(["--checkpoint", str(vit_t_checkpoint), "--output-dir", str(folder)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: validation failed: the exported prompt-decoder gives a mask with IoU"), error
    assert list(folder.iterdir()) == []


def test_graph_beyond_protobufs_limit_keeps_its_weights_beside_it_and_serves(vit_t_checkpoint, tmp_path,
                                                                           monkeypatch, embedded, vit_t_predictor):
    """SAM ViT-H's encoder is over 2 GB: shown here with a threshold lowered to 1 MB on MobileSAM's decoder."""
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 2**20)
    folder = tmp_path / "out"
    assert onnx_converter.main(["--checkpoint", str(vit_t_checkpoint), "--output-dir", str(folder)]) == 0
    decoder = folder / "mobile_sam.decoder.onnx"
    assert sorted(path.name for path in folder.iterdir()) == [decoder.name, f"{decoder.name}.data"]
    assert decoder.stat().st_size < 2**20 < (folder / f"{decoder.name}.data").stat().st_size
    predictor = OnnxSamPredictor(open_graph(decoder, "ONNX_DECODER", DECODER_GRAPH, "cpu"), None, "vit_t")
    _, torch_embedding, _ = embedded((700, 1500))
    (prompt,) = prompts_from_regions(REGIONS["box"])
    expected = vit_t_predictor.predict(torch_embedding, prompt).mask
    assert onnx_converter.mask_iou(predictor.predict(onnx_converter.as_numpy(torch_embedding), prompt).mask,
                                   expected) >= 0.99


def test_export_leaves_the_torch_model_in_eval_mode(vit_t_predictor, tmp_path):
    onnx_export.export_decoder(vit_t_predictor.model, tmp_path / "decoder.onnx", "vit_t")
    assert not any(module.training for module in vit_t_predictor.model.modules())


def test_onnx_checkpoint_is_an_alias_of_onnx_decoder():
    from sam_ls_backend.settings import Settings

    settings = Settings.from_env({"SAM_CHOICE": "onnx", "ONNX_CHECKPOINT": "exported.onnx"})
    assert (settings.sam_choice, settings.onnx_decoder) == ("ONNX", "exported.onnx")


def test_missing_decoder_stops_the_server_with_one_line(tmp_path):
    missing = tmp_path / "decoder.onnx"
    done = subprocess.run([sys.executable, str(ROOT / "_wsgi.py"), "--kwargs", "SAM_CHOICE=ONNX",
                           f"ONNX_DECODER={missing}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: ONNX_DECODER not found: {missing}. Export it with python onnx_converter.py --checkpoint "
        "<SAM or MobileSAM checkpoint>, or set ONNX_DECODER to the file's path"]


def test_unusable_files_are_refused_with_what_is_wrong(onnx_settings, export, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    foreign = tmp_path / "other-weights.encoder.onnx"
    encoder = onnx.load(str(export.file("encoder")))
    next(entry for entry in encoder.metadata_props if entry.key == WEIGHTS_KEY).value = "0" * 32
    onnx.save_model(encoder, str(foreign))
    cases = {
        "is not a readable ONNX model": {"onnx_decoder": str(garbage)},
        "holds a SAM image-encoder, not a SAM prompt-decoder": {"onnx_decoder": str(export.file("encoder"))},
        "were exported from different checkpoints": {"onnx_encoder": str(foreign)},
        "runs the vit_t image encoder in torch from MOBILESAM_CHECKPOINT=": {
            "onnx_encoder": "", "mobilesam_checkpoint": str(tmp_path / "absent.pt")},
    }
    for message, overrides in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_predictor(onnx_settings.with_overrides(**overrides))


def test_torch_free_requirements_pin_what_the_server_pins_minus_torch():
    serving, torch_free = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-onnx.txt")
    assert not TORCH_STACK & set(torch_free)
    assert torch_free == {name: version for name, version in serving.items() if name not in TORCH_STACK}


def pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file, names normalised."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (gunicorn's master and workers), from /proc."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").iterdir():
            pending.extend(int(child) for child in (task / "children").read_text().split())
    return found


def torch_files_mapped(pids: list[int]) -> set[str]:
    """Shared libraries of torch or torchvision mapped into any of the processes: present once imported."""
    found = set()
    for pid in pids:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if re.search(r"/(torch|torchvision)/.*\.so", path):
                found.add(path)
    return found


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
