"""STEER_ROLE: an `api` replica serves and never computes, a `worker` computes and does not serve generation;
together, on one store, a task posted to the api replica is computed by the worker and served by the api."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.api_helpers import ANTONYMS, assert_error, running_app, settings, task_body, wait_task

PROMPT = "Q: hot\nA:"


async def test_api_and_worker_replicas_share_the_work(tmp_path: Path) -> None:
    api_config = settings(tmp_path, role="api", reconcile_interval_s=0.2)
    worker_config = settings(tmp_path, role="worker", reconcile_interval_s=0.2)
    async with running_app(api_config) as (_, api):
        task = (await api.post("/v1/tasks", json=task_body(ANTONYMS))).json()["id"]
        await asyncio.sleep(1.0)
        assert (await api.get(f"/v1/tasks/{task}")).json()["status"] == "pending"  # nobody computes it
        ready = (await api.get("/readyz")).json()
        assert ready["role"] == "api" and ready["batcher"] == "ok"

        async with running_app(worker_config) as (_, worker):
            ready = await worker.get("/readyz")
            assert ready.status_code == 200 and ready.json()["batcher"] == "off"
            generate = {"prompt": PROMPT, "max_new_tokens": 3}
            assert_error(await worker.post("/v1/generate", json=generate), 503, "not_serving")
            assert (await wait_task(api, task, timeout_s=60))["status"] == "ready"  # the worker adopted it

        steered = {**generate, "steering": [{"task": task}]}
        response = await api.post("/v1/generate", json=steered)
        assert response.status_code == 200, response.text
