"""What Label Studio 1.23.2's real labeling page sends for a TextArea pointed at a `<Video>` (`toName="video"`),
as a SAM 3 concept typed for a video would be: measured against a recording stand-in backend in Debian's
headless Chromium, with Auto-Annotation on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.browser import LabelingPage, logged_in_chromium
from tests.support.label_studio import ADMIN_EMAIL, ADMIN_PASSWORD, LabelStudio
from tests.support.recording_backend import RecordingBackend
from tests.support.video_bodies import VIDEO_CONFIG
from tests.support.videos import Square, scene_frames, write_webm

WAIT_S = 15.0
TEXTAREA_CONFIG = VIDEO_CONFIG.replace(
    "</View>", '<TextArea name="concept" toName="video" editable="true" rows="1" smart="true"/></View>')


@pytest.fixture
def recording() -> RecordingBackend:
    backend = RecordingBackend()
    yield backend
    backend.close()


def test_a_textarea_for_the_video_sends_the_text_typed(label_studio: LabelStudio, recording: RecordingBackend,
                                                       tmp_path: Path) -> None:
    video = tmp_path / "street.webm"
    write_webm(video, scene_frames(12, 160, 96, [Square((10, 20), (5, 1), 24)]))
    project_id = label_studio.create_project("sam-ls-backend video textarea", TEXTAREA_CONFIG)
    task_id = label_studio.import_image(project_id, video)
    label_studio.connect_ml_backend(project_id, recording.url)
    with logged_in_chromium(label_studio.url, ADMIN_EMAIL, ADMIN_PASSWORD) as chromium:
        page = chromium.context.new_page()
        labeling = LabelingPage(page, label_studio.url)
        page.goto(f"{label_studio.url}/projects/{project_id}/data?task={task_id}")
        page.wait_for_function("() => window.Htx && Htx.annotationStore && Htx.annotationStore.selected",
                               timeout=60_000)
        page.locator("video").first.wait_for(state="attached", timeout=60_000)
        labeling.set_toggle("auto-annotation", True)
        labeling.submit_text("car")
        deadline = time.monotonic() + WAIT_S
        while not recording.interactive_bodies() and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        bodies = recording.interactive_bodies()
        page.close()
    assert chromium.refused == []
    assert len(bodies) == 1, f"{len(bodies)} interactive requests"
    (sent,) = bodies[0]["params"]["context"]["result"]
    assert (sent["type"], sent["to_name"], sent["value"]["text"]) == ("textarea", "video", ["car"])
