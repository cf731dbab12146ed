"""The resident compute thread with a real model: a click is decoded while another image's encoder run waits."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sam_ls_backend.compute_thread import COMPUTE
from sam_ls_backend.protocol.prompts import Prompt
from tests.support.polling import eventually
from tests.support.scenes import scene


def test_a_click_is_decoded_while_the_encoder_runs(vit_t_predictor) -> None:
    embedding = vit_t_predictor.embed(scene(320, 240, seed=1))
    click = Prompt(label="Foreground", to_name="image", points=((40.0, 50.0),), point_labels=(1,))
    with ThreadPoolExecutor(max_workers=2) as callers:
        with vit_t_predictor._encoder_lock:  # another image's encoder run is in progress
            encoding = callers.submit(vit_t_predictor.embed, scene(320, 240, seed=2))
            assert eventually(COMPUTE._free.locked)  # the waiting encoder call holds the resident thread
            # queued behind the encoder, the click would wait until the lock is released below
            answer = callers.submit(vit_t_predictor.predict, embedding, click).result(timeout=60)
            assert not encoding.done()
        assert encoding.result(timeout=60).original_size == (240, 320)
    assert answer.mask.shape == (240, 320)
