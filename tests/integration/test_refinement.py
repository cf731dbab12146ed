"""Multi-round refinement, several objects at once, negative rectangles, the confidence threshold and cleanup.

Refined masks are compared with `SamPredictor.predict(..., mask_input=previous logits)` on the same model.
"""

from __future__ import annotations

import mmap

import numpy as np
import pytest
from segment_anything import SamPredictor

from sam_ls_backend.embeddings.refinement import LOGITS_BYTES, RefinementHistory
from sam_ls_backend.predictors.base import Embedding, MaskResult
from sam_ls_backend.predictors.sam import SamImagePredictor
from sam_ls_backend.protocol.prompts import Prompt
from tests.support.ls_bodies import keypoint, predict_body, rectangle
from tests.support.reference import decode_brush_region
from tests.support.scenes import memory_owner, scene

WIDTH, HEIGHT = 320, 240
SCALE = np.array([WIDTH / 100, HEIGHT / 100])


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return scene(WIDTH, HEIGHT, seed=31)


@pytest.fixture(scope="module")
def sam(vit_t_predictor, image) -> SamPredictor:
    """SamPredictor on the very model the backend uses, with the test image set."""
    predictor = SamPredictor(vit_t_predictor.model)
    predictor.set_image(image)
    return predictor


@pytest.fixture(scope="module")
def url(image_host, image) -> str:
    return image_host.add_image("/data/upload/5/refine.png", image)


def click(client, url: str, regions: list[dict]) -> list[dict]:
    response = client.post("/predict", json=predict_body(url, regions, task_id=5))
    assert response.status_code == 200, response.json
    return response.json["results"][0]["result"]


def test_one_more_click_feeds_the_previous_logits_as_mask_input_and_a_reset_starts_fresh(
        make_client, url, sam, vit_t_predictor):
    client, backend = make_client()
    first, second, other = (30, 40), (60, 55), (70, 20)
    click(client, url, [keypoint(*first)])
    # SamPredictor's own loop: the best of three for the lone click, its logits into the next call.
    masks, scores, logits = sam.predict(np.array([first]) * SCALE, np.array([1]), multimask_output=True)
    previous = logits[int(np.argmax(scores))][None]
    two_points, two_labels = np.array([first, second]) * SCALE, np.array([1, 0])
    refined, _, refined_logits = sam.predict(two_points, two_labels, mask_input=previous, multimask_output=False)
    fresh, _, _ = sam.predict(two_points, two_labels, multimask_output=False)
    assert (refined[0] != fresh[0]).any(), "the refined and fresh answers must differ for this test to mean anything"

    (region,) = click(client, url, [keypoint(*first), keypoint(*second, False)])
    np.testing.assert_array_equal(decode_brush_region(region), refined[0])

    three = [keypoint(*first), keypoint(*second, False), keypoint(*other)]
    (region,) = click(client, url, three)
    third, _, _ = sam.predict(np.array([first, second, other]) * SCALE, np.array([1, 0, 1]),
                              mask_input=refined_logits, multimask_output=False)
    np.testing.assert_array_equal(decode_brush_region(region), third[0])

    (region,) = click(client, url, [keypoint(*first), keypoint(*other)])  # the negative click removed: a reset
    reset, _, _ = sam.predict(np.array([first, other]) * SCALE, np.array([1, 1]), multimask_output=False)
    np.testing.assert_array_equal(decode_brush_region(region), reset[0])


def test_refinement_is_counted_and_kept_per_image(make_client, url, image_host):
    client, backend = make_client()
    other_url = image_host.add_image("/data/upload/5/refine-other.png", scene(200, 150, seed=32))
    stats = []
    for target, regions in ((url, [keypoint(20, 20)]), (other_url, [keypoint(50, 50)]),
                            (url, [keypoint(20, 20), keypoint(30, 30)])):
        response = client.post("/predict", json=predict_body(target, regions, task_id=5))
        assert response.status_code == 200
        stats.append(backend.history._rounds.stats().entries)
    assert stats == [1, 2, 2]
    key = next(k for k in backend.history._rounds._entries if k[2] == url)
    prompts = [Prompt("Foreground", "image", points=((20, 20), (30, 30), (40, 40)), point_labels=(1, 1, 1))]
    assert backend.history.mask_inputs(key, prompts)[0] is not None, "the image's round survived the other image"


def test_history_refines_click_objects_only_and_forgets_the_least_recent():
    history = RefinementHistory(max_bytes=2 * 2 * LOGITS_BYTES)
    cat = Prompt("Cat", "image", box=(0, 0, 50, 50))
    dog = Prompt("Dog", "image", points=((60, 60),), point_labels=(1,))
    answers = [MaskResult(np.zeros((2, 2), bool), 0.5, np.full((256, 256), v, np.float32)) for v in (1.0, 2.0)]
    history.remember("a", [cat, dog], [None, None], answers)
    cat_clicked = Prompt("Cat", "image", points=((5, 5),), point_labels=(0,), box=cat.box)
    dog_clicked = Prompt("Dog", "image", points=((60, 60), (70, 70)), point_labels=(1, 0))
    cat_input, dog_input = history.mask_inputs("a", [cat_clicked, dog_clicked])
    assert cat_input is None, "a rectangle's object is decoded from its box and clicks alone"
    assert dog_input[0, 0] == 2.0, "one more click: the previous answer's logits"
    assert history.mask_inputs("a", [cat, dog]) == [None, None], "unchanged: what they had last time (nothing)"
    assert history.mask_inputs("a", [dog_clicked]) == [None], "the cat's box is gone: a reset"
    history.remember("b", [dog], [None], answers[1:])
    history.remember("c", [dog], [None], answers[1:])
    assert history.mask_inputs("a", [cat, dog_clicked]) == [None, None], "evicted: over the byte bound"
    assert history.mask_inputs("c", [dog_clicked])[0] is not None


def test_several_rectangles_share_one_decoder_call_when_batching_is_on(vit_t_predictor, sam, image):
    batched = SamImagePredictor(vit_t_predictor.model, "vit_t", batch_decoder=True)
    calls = []
    hook = vit_t_predictor.model.mask_decoder.register_forward_hook(lambda *args: calls.append(1))
    boxes = [(5, 5, 35, 35), (40, 20, 65, 70), (70, 60, 95, 95)]
    prompts = [Prompt(f"L{i}", "image", box=box) for i, box in enumerate(boxes)]
    prompts.append(Prompt("click", "image", points=((50, 50),), point_labels=(1,)))
    embedding: Embedding = batched.embed(image)
    try:
        answers = batched.predict_batch(embedding, prompts, [None] * len(prompts))
        assert len(calls) == 2, "three boxes in one call, the click in another"
        one_by_one = SamImagePredictor(vit_t_predictor.model, "vit_t").predict_batch(
            embedding, prompts, [None] * len(prompts))
        assert len(calls) == 2 + 4
    finally:
        hook.remove()
    for prompt, answer, alone in zip(prompts, answers, one_by_one):
        if prompt.box is None:
            np.testing.assert_array_equal(answer.mask, alone.mask)
            continue
        expected, _, _ = sam.predict(box=np.array(prompt.box) * np.tile(SCALE, 2), multimask_output=False)
        np.testing.assert_array_equal(alone.mask, expected[0])
        # Batched products round differently: at most a few pixels per million may flip.
        assert (answer.mask != expected[0]).sum() <= 1e-4 * expected[0].size
        assert answer.score == pytest.approx(alone.score, abs=1e-4)


def test_a_negative_rectangle_cuts_its_area_out_of_the_object(make_client, url, sam):
    client, _ = make_client()
    negative = {**rectangle(20, 20, 20, 30), "is_positive": False}
    (region,) = click(client, url, [rectangle(10, 10, 50, 60), negative])
    box_mask, _, _ = sam.predict(box=np.array([10, 10, 60, 70]) * np.tile(SCALE, 2), multimask_output=False)
    expected = box_mask[0].copy()
    expected[48:120, 64:128] = False  # y 20..50 % of 240, x 20..40 % of 320: pixel centres inside
    assert box_mask[0][48:120, 64:128].any(), "the negative rectangle must overlap the object"
    np.testing.assert_array_equal(decode_brush_region(region), expected)


class StubPredictor:
    """A predictor with fixed answers and no `predict_batch`, like a minimal ONNX predictor."""

    model_type = "vit_t"

    def __init__(self, masks: list[np.ndarray], scores: list[float]) -> None:
        self.answers = [MaskResult(m, s, np.zeros((256, 256), np.float32)) for m, s in zip(masks, scores)]
        self.asked: list[Prompt] = []

    def embed(self, image: np.ndarray) -> Embedding:
        return Embedding(np.zeros((1, 256, 64, 64), np.float32), (768, 1024), image.shape[:2])

    def predict(self, embedding: Embedding, prompt: Prompt) -> MaskResult:
        self.asked.append(prompt)
        return self.answers[len(self.asked) - 1]


def stub_backend(image_host, predictor: StubPredictor, **settings: str):
    from sam_ls_backend.backend import SamBackend
    from sam_ls_backend.server import create_app
    from sam_ls_backend.settings import Settings

    settings = Settings.from_env({}, LABEL_STUDIO_URL=image_host.url, LABEL_STUDIO_API_KEY=image_host.token,
                                 **settings)
    backend = SamBackend(settings, predictor)
    return create_app(settings, backend).test_client(), backend


def test_masks_under_the_score_threshold_are_not_returned(image_host, url):
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[10:50, 10:50] = True
    stub = StubPredictor([mask] * 3, [0.2, 0.9, 0.5])
    client, backend = stub_backend(image_host, stub, SCORE_THRESHOLD="0.5")
    regions = [rectangle(0, 0, 20, 20, label="a"), rectangle(30, 30, 20, 20, label="b"),
               rectangle(60, 60, 20, 20, label="c")]
    result = click(client, url, regions)
    assert [r["score"] for r in result] == [0.9, 0.5]
    assert len(stub.asked) == 3, "a predictor without predict_batch is asked once per object"
    assert backend.history._rounds.stats().entries == 1, "the round is remembered for its objects' ids"


def test_min_area_removes_small_islands_and_holes(image_host, url):
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[20:100, 20:100] = True
    mask[50:53, 50:53] = False
    mask[200:203, 300:303] = True
    client, _ = stub_backend(image_host, StubPredictor([mask, mask], [0.5, 0.5]), MIN_AREA="10")
    (region,) = click(client, url, [keypoint(20, 20)])
    expected = np.zeros_like(mask)
    expected[20:100, 20:100] = True
    np.testing.assert_array_equal(decode_brush_region(region), expected)
    client, _ = stub_backend(image_host, StubPredictor([mask], [0.5]))
    np.testing.assert_array_equal(decode_brush_region(click(client, url, [keypoint(20, 20)])[0]), mask)


def test_history_keeps_its_own_copy_of_the_logits_outside_the_malloc_heap():
    """A batch's logits come as views of one array; the history keeps each object's 256 KiB, in a mapping."""
    history = RefinementHistory(max_bytes=4 * LOGITS_BYTES)
    batch = np.stack([np.full((256, 256), v, np.float32) for v in (1.0, 2.0)])
    dog = Prompt("Dog", "image", points=((60, 60),), point_labels=(1,))
    history.remember("a", [dog], [None], [MaskResult(np.zeros((2, 2), bool), 0.5, batch[1])])
    batch[:] = 0  # the decoder's buffer is reused or freed: the history must not see it
    (kept,) = history.mask_inputs("a", [Prompt("Dog", "image", points=((60, 60), (70, 70)), point_labels=(1, 0))])
    assert kept.shape == (256, 256) and (kept == 2.0).all()
    assert not np.shares_memory(kept, batch)
    assert isinstance(memory_owner(kept), mmap.mmap)


def test_history_stays_within_its_bound_under_concurrent_rounds():
    from concurrent.futures import ThreadPoolExecutor

    history = RefinementHistory(max_bytes=10 * 2 * LOGITS_BYTES)
    answer = MaskResult(np.zeros((2, 2), bool), 0.5, np.zeros((256, 256), np.float32))

    def rounds(worker: int) -> None:
        for step in range(200):
            key = (worker, step % 7)
            prompt = Prompt(None, "image", points=((step % 50, 1),), point_labels=(1,))
            history.mask_inputs(key, [prompt])
            history.remember(key, [prompt], [None], [answer])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(rounds, range(8)))
    kept = history._rounds.stats()
    assert kept.entries == 10
    assert kept.cost == sum(entry.nbytes for entry in history._rounds._entries.values()) <= history._rounds.max_cost
