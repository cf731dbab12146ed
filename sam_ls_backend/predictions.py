"""Pre-annotate a whole Label Studio project: `python -m precompute --project ID --predictions`.

Every task of the project is sent, in batches of `--batch` tasks, to a backend as Label Studio's *Retrieve
predictions* sends them (a /predict without context); each answer is stored through Label Studio's API
(`POST /api/predictions/`) with the backend's `model_version` and scores. `--backend URL` sends the batches to
a running backend, or to the load balancer in front of its replicas (the compose scale-out's nginx, a Kubernetes
service), `--concurrency` batches at a time, so that the replicas share the work; without it the model is
loaded in this process. Resumable: a task that already has a prediction of this `model_version` is skipped,
so an interrupted run is simply started again. What a task gets is PREANNOTATE's business (concepts,
everything) on the backend that answers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import requests
from tqdm import tqdm

from sam_ls_backend.errors import BackendError
from sam_ls_backend.outputs.base import JsonText

log = logging.getLogger("predictions")

PREDICT_TIMEOUT_S = 600.0

Predict = Callable[[dict], dict]  # a /predict body to its answer ({"results": [...], "model_version": ...})


class Api(Protocol):
    """The Label Studio API calls this command makes."""

    def get(self, path: str, params: dict | None = None) -> Any: ...

    def post(self, path: str, body: dict) -> Any: ...

    def tasks(self, project: int) -> Iterator[dict]: ...


def predict_project(api: Api, predict: Predict, model_version: str, project: int, batch: int = 8,
                    concurrency: int = 1, limit: int = 0) -> dict[str, int]:
    """Store a prediction for every task of `project` lacking one of `model_version`; counts of what happened."""
    config = api.get(f"/api/projects/{project}/")["label_config"]
    done = predicted_tasks(api, project, model_version)
    todo = [task for task in api.tasks(project) if task.get("id") not in done]
    if limit:
        todo = todo[:limit]
    counts = {"predicted": 0, "regions": 0, "skipped": len(done), "failed": 0}
    batches = [todo[start:start + batch] for start in range(0, len(todo), batch)]

    def run(tasks: list[dict]) -> tuple[int, int, int]:
        body = {"tasks": tasks, "project": str(project), "label_config": config, "params": {"context": None}}
        try:
            answer = predict(body)
        except (BackendError, requests.RequestException) as error:
            log.warning("tasks %s: %s", [task.get("id") for task in tasks], error)
            return 0, 0, len(tasks)
        stored = regions = 0
        for task, prediction in zip(tasks, answer.get("results", [])):
            if not isinstance(prediction, dict):
                continue  # the backend had nothing for it (PREANNOTATE=off)
            api.post("/api/predictions/", {"task": task["id"], "result": prediction.get("result", []),
                                           "score": prediction.get("score", 0.0),
                                           "model_version": prediction.get("model_version", model_version)})
            stored += 1
            regions += len(prediction.get("result", []))
        return stored, regions, len(tasks) - stored

    with tqdm(total=len(todo), unit="task", desc="predicting") as bar, ThreadPoolExecutor(concurrency) as pool:
        for (stored, regions, failed), tasks in zip(pool.map(run, batches), batches):
            counts["predicted"] += stored
            counts["regions"] += regions
            counts["failed"] += failed
            bar.update(len(tasks))
    return counts


def predicted_tasks(api: Api, project: int, model_version: str) -> set[int]:
    """Ids of the project's tasks that have a prediction of `model_version`."""
    found = api.get("/api/predictions/", params={"project": project})
    items = found.get("results", []) if isinstance(found, dict) else found
    return {item["task"] for item in items if item.get("model_version") == model_version}


def http_predict(url: str, auth: tuple[str, str] | None = None) -> Predict:
    """/predict of a running backend (or a load balancer in front of several)."""
    session = requests.Session()

    def predict(body: dict) -> dict:
        response = session.post(f"{url.rstrip('/')}/predict", json=body, auth=auth, timeout=PREDICT_TIMEOUT_S)
        if response.status_code != 200:
            raise BackendError(f"the backend answered HTTP {response.status_code}: {response.text[:300]}")
        return response.json()

    return predict


def in_process_predict(backend: Any) -> Predict:
    """`SamBackend.predict` in this process, its ready-made JSON values (brush RLEs) turned into plain ones."""
    def predict(body: dict) -> dict:
        return plain(backend.predict(body))

    return predict


def plain(value: Any) -> Any:
    """`value` with every `JsonText` replaced by the value its text encodes."""
    if isinstance(value, JsonText):
        return json.loads(value.data)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value
