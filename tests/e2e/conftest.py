"""The real Label Studio every end-to-end test talks to: one process for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.label_studio import LABEL_STUDIO_VERSION, HarnessError, LabelStudio, fresh_data_dir


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    """A fresh Label Studio serving uploads and /data/local-files from a temporary root; each test module keeps
    its local files in a folder of its own there (a local storage imports every file of its folder)."""
    work = tmp_path_factory.mktemp("label-studio")
    (work / "files").mkdir()
    try:
        data_dir = fresh_data_dir(work / "data")
    except HarnessError as error:
        pytest.fail(f"Label Studio {LABEL_STUDIO_VERSION} could not be installed or prepared: {error}")
    with LabelStudio(data_dir, work / "label-studio.log", local_files_root=work / "files") as server:
        yield server
