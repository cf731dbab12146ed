"""Embed every image of a Label Studio project ahead of annotation: `python -m precompute --project ID`.

The embeddings go to the shared cache (REDIS_URL), where every backend worker and replica finds them, so no
annotator waits for the encoder even on the first click. Resumable: an image already in the shared cache is
skipped without being downloaded, so an interrupted run simply starts again. With `--predictions` the command
pre-annotates the project instead (predictions.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from typing import Any

import requests
from tqdm import tqdm

from sam_ls_backend.errors import BackendError, ConfigError
from sam_ls_backend.outputs import images_with_outputs
from sam_ls_backend.protocol.label_config import parse_label_config
from sam_ls_backend.settings import Settings

log = logging.getLogger("precompute")

PAGE_SIZE = 100


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Embed every image of a Label Studio project into REDIS_URL, or "
                                     "(--predictions) pre-annotate it")
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    parser.add_argument("--limit", type=int, default=0, help="stop after this many tasks (0: all)")
    parser.add_argument("--predictions", action="store_true",
                        help="store a prediction for every task lacking one of this model_version (PREANNOTATE)")
    parser.add_argument("--backend", default="", help="--predictions: URL of a running backend or of the load "
                        "balancer in front of its replicas (default: load the model in this process)")
    parser.add_argument("--batch", type=int, default=0, help="--predictions: tasks per /predict "
                        "(default PREDICTIONS_BATCH)")
    parser.add_argument("--concurrency", type=int, default=0, help="--predictions: batches at a time "
                        "(default PREDICTIONS_CONCURRENCY)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        if args.predictions:
            counts = _predictions(settings, args)
            print(", ".join(f"{count} {what}" for what, count in counts.items()))
            return 0 if not counts["failed"] else 1
        if not settings.redis_url:
            raise ConfigError("precompute fills the shared cache: set REDIS_URL (the backend's own cache "
                              "already warms a task's image when the task is opened)")
        if not settings.label_studio_url or not settings.label_studio_api_key:
            raise ConfigError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to read the project's tasks")
        from sam_ls_backend.app import load_backend

        backend = load_backend(settings)
        counts = precompute(backend, args.project, args.limit)
    except BackendError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    print(", ".join(f"{count} {what}" for what, count in counts.items()))
    return 0 if not counts["failed"] else 1


def _predictions(settings: Settings, args: argparse.Namespace) -> dict[str, int]:
    from sam_ls_backend.predictions import http_predict, in_process_predict, predict_project

    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise ConfigError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to read and write the project's tasks")
    batch, concurrency = args.batch or settings.predictions_batch, args.concurrency or settings.predictions_concurrency
    if args.backend:
        auth = (settings.basic_auth_user, settings.basic_auth_pass) if settings.basic_auth_enabled else None
        predict = http_predict(args.backend, auth)
        answer = requests.get(f"{args.backend.rstrip('/')}/versions", auth=auth, timeout=60)
        model_version = answer.json()["model_version"]
        from sam_ls_backend.media.fetch import ImageSource

        api = LabelStudioApi(ImageSource(settings), settings.label_studio_url)
    else:
        from sam_ls_backend.app import load_backend

        backend = load_backend(settings)
        predict, model_version = in_process_predict(backend), backend.model_version
        api = LabelStudioApi(backend.images, settings.label_studio_url)
    return predict_project(api, predict, model_version, args.project, batch, concurrency, args.limit)


def precompute(backend, project: int, limit: int = 0) -> dict[str, int]:
    """Embed each task image of `project`; counts of images encoded, already shared, and failed."""
    api = LabelStudioApi(backend.images, backend.settings.label_studio_url)
    config = parse_label_config(api.get(f"/api/projects/{project}/")["label_config"])
    fields = [config.image_fields[name] for name in images_with_outputs(config)]
    counts = {"encoded": 0, "already shared": 0, "failed": 0}
    total = api.get("/api/tasks/", params={"project": project, "page_size": 1}).get("total")
    bar = tqdm(total=min(total, limit) if total and limit else (limit or total), unit="task", desc="embedding")
    for index, task in enumerate(api.tasks(project)):
        if limit and index >= limit:
            break
        for field in fields:
            url = task.get("data", {}).get(field)
            if not isinstance(url, str) or not url.strip():
                continue
            try:
                _, source = backend.first_embeddings.get(url.strip(), task.get("id"))
                counts["encoded" if source == "encoder" else "already shared"] += 1
            except BackendError as error:
                counts["failed"] += 1
                log.warning("task %s: %s", task.get("id"), error.message)
        bar.update(1)
    bar.close()
    return counts


class LabelStudioApi:
    """The few Label Studio API calls precompute makes, with the backend's credentials (`images`: ImageSource)."""

    def __init__(self, images, url: str) -> None:
        self.images = images
        self.url = url
        self.session = requests.Session()

    def get(self, path: str, params: dict | None = None) -> Any:
        url = self.url + path
        headers = {"Authorization": self.images.authorization(url) or ""}
        response = self.session.get(url, params=params, headers=headers, timeout=60)
        if response.status_code != 200:
            raise BackendError(f"Label Studio answered HTTP {response.status_code} for {path}")
        return response.json()

    def post(self, path: str, body: dict) -> Any:
        url = self.url + path
        headers = {"Authorization": self.images.authorization(url) or ""}
        response = self.session.post(url, json=body, headers=headers, timeout=60)
        if response.status_code not in (200, 201):
            raise BackendError(f"Label Studio answered HTTP {response.status_code} for {path}: {response.text[:300]}")
        return response.json()

    def tasks(self, project: int) -> Iterator[dict]:
        """Every task of the project, page by page; stops at the answer's `total`, since Label Studio answers a
        page past the last one with 404 (a project of exactly a multiple of PAGE_SIZE tasks)."""
        page, seen = 1, 0
        while True:
            answer = self.get("/api/tasks/", params={"project": project, "page": page, "page_size": PAGE_SIZE})
            tasks = answer.get("tasks", []) if isinstance(answer, dict) else answer
            yield from tasks
            seen += len(tasks)
            total = answer.get("total") if isinstance(answer, dict) else None
            if len(tasks) < PAGE_SIZE or (isinstance(total, int) and seen >= total):
                return
            page += 1


if __name__ == "__main__":
    sys.exit(main())
