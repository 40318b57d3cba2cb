"""The service on vLLM answers as the service on the transformers engine, on the real default model (float32).

Two real servers (`python -m app`), `STEER_ENGINE=vllm` and `STEER_ENGINE=transformers`, import the same vectors,
read from the model's own activations on the antonyms task (a task vector, a contrastive difference, last-token
head means with chosen gates), one per injection mode at a strength that changes the answers. Agreement held:
identical greedy answers (16 tokens, 3 queries sent at once to each server, per mode; tolerance: none, the
engines' float32 logits differ by rounding only), plain answers too, through `/v1/generate` and the OpenAI
route; the same for a KV prefix (context tuning). A plan the vLLM engine cannot take is a 422 and the request
beside it is unaffected.

The vLLM server runs eager (`STEER_VLLM_ENFORCE_EAGER=1`): compiled, vLLM 0.32 compiles the default model at
every start on CPU, which took 8-15 minutes on these loaded 2 cores, past the suite's 900 s per test. The
compiled form is held to the eager one in `test_vllm_compiled.py`.

Run: `.venv-vllm/bin/python -m pytest -m vllm tests/test_vllm_default_model.py` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import torch

from steering.methods.capture import last_token_activations
from steering.model.loading import LoadedModel
from steering.tasks.datasets import load_task, split_task
from steering.tasks.templates import DEFAULT_TEMPLATE, render_example, render_query
from steering.vectors.modes import ACTIVATION_MODE_NAMES
from steering.vectors.task_vector import TaskVector
from tests.conftest import ServerProcess, start_server
from tests.vllm_fixtures import needs_vllm, noised_prefix

pytestmark = [needs_vllm, pytest.mark.vllm, pytest.mark.slow]

ANSWER_TOKENS = 16
LAYER = 12


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    """Both engines' servers, started side by side (vLLM's start takes the longest)."""
    root = tmp_path_factory.mktemp("vllm-service")

    def start(engine: str) -> ServerProcess:
        env = {"STEER_MODEL": "default", "STEER_ENGINE": engine, "STEER_DATA_DIR": str(root / engine)}
        env |= {"STEER_VLLM_KV_CACHE_BYTES": str(256 << 20), "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
        env |= {"STEER_VLLM_ENFORCE_EAGER": "1"}
        return start_server(env, root / f"{engine}.log", timeout_s=300)

    with ThreadPoolExecutor(2) as pool:
        started = dict(zip(("vllm", "transformers"), pool.map(start, ("vllm", "transformers")), strict=True))
    yield started
    for server in started.values():
        server.stop()


def vectors_per_mode(lm: LoadedModel) -> tuple[list[str], dict[str, TaskVector]]:
    """Three test inputs, and one vector per mode built from the model's activations on antonyms (each carries
    the layers and strength it is applied with)."""
    demos, test = split_task(load_task("antonyms"), 20, 3, seed=0)
    few_shot = [
        "".join(render_example(DEFAULT_TEMPLATE, d) for d in demos[i : i + 5])
        + render_query(DEFAULT_TEMPLATE, demos[i + 5].input)
        for i in range(0, 12, 2)
    ]
    acts = last_token_activations(lm, few_shot, heads=True)
    outputs = last_token_activations(lm, [render_query(DEFAULT_TEMPLATE, d.output) for d in demos])["residual"]
    inputs = last_token_activations(lm, [render_query(DEFAULT_TEMPLATE, d.input) for d in demos])["residual"]
    task, difference, means = acts["residual"].mean(0), (outputs - inputs).mean(0), acts["heads"].mean(0)
    gates = torch.full((lm.arch.num_layers, lm.arch.num_heads), -6.0)
    gates[8:14, :3] = 1.0  # three heads of six middle layers mix in their means
    every_layer = list(range(lm.arch.num_layers))

    def vector(mode: str, strength: float, layers: list[int], **tensors: torch.Tensor) -> TaskVector:
        method = "soft_injection" if mode.startswith("head_mix") else "contrastive"
        return TaskVector(method, mode, tensors, layers, strength, lm.fingerprint)  # type: ignore[arg-type]

    heads = {"head_means": means, "gate_logits": gates}
    answer_heads = {**heads, "answer_head_means": means.clone(), "answer_gate_logits": gates - 2.0}
    vectors = {
        "add_all": vector("add_all", 4.0, [LAYER], residual=difference),
        "add_all_norm": vector("add_all_norm", 0.5, list(range(8, 16)), residual=difference.clone()),
        "add_from_last": vector("add_from_last", 4.0, [LAYER], residual=difference.clone()),
        "add_last": vector("add_last", 4.0, [LAYER], residual=difference.clone()),
        "replace_last": vector("replace_last", 1.0, [LAYER], residual=task),
        "head_mix_last": vector("head_mix_last", 1.0, every_layer, **heads),
        "head_mix_answer": vector("head_mix_answer", 1.0, every_layer, **answer_heads),
    }
    assert set(vectors) == set(ACTIVATION_MODE_NAMES)
    return [d.input for d in test], vectors


def post_all(url: str, path: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """Send the bodies at once, so that the server batches them."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: httpx.post(url + path, json=body, timeout=120), bodies))


def import_vector(server: ServerProcess, vector: TaskVector) -> str:
    response = httpx.post(f"{server.url}/v1/tasks/import", content=vector.to_bytes(), timeout=60)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_vllm_answers_equal_the_transformers_engine_in_every_mode(
    servers: dict[str, ServerProcess], default_lm: LoadedModel
) -> None:
    inputs, vectors = vectors_per_mode(default_lm)
    task_ids = {mode: {name: import_vector(s, v) for name, s in servers.items()} for mode, v in vectors.items()}
    assert all(len(set(ids.values())) == 1 for ids in task_ids.values()), "a task id is the vector's content"

    def answers(mode: str | None) -> dict[str, list[str]]:
        def body(text: str) -> dict[str, Any]:
            steering = [] if mode is None else [{"task": task_ids[mode]["vllm"]}]
            prompt = render_query(DEFAULT_TEMPLATE, text)
            return {"prompt": prompt, "steering": steering, "max_new_tokens": ANSWER_TOKENS, "stop": []}

        out = {}
        for name, server in servers.items():
            responses = post_all(server.url, "/v1/generate", [body(t) for t in inputs])
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
            out[name] = [r.json()["text"] for r in responses]
        return out

    plain = answers(None)
    assert plain["vllm"] == plain["transformers"]
    for mode in vectors:
        got = answers(mode)
        assert got["vllm"] == got["transformers"], mode
        assert got["vllm"] != plain["vllm"], f"{mode} changed no answer: the comparison would prove nothing"

    chat = {
        "messages": [{"role": "user", "content": "Say the opposite of hot."}],
        "max_tokens": ANSWER_TOKENS,
        "temperature": 0,
        "steering": [{"task": task_ids["replace_last"]["vllm"], "strength": 0.5}],
    }
    replies = {
        name: httpx.post(f"{s.url}/v1/chat/completions", json=chat, timeout=120).json() for name, s in servers.items()
    }
    assert replies["vllm"]["choices"][0]["message"] == replies["transformers"]["choices"][0]["message"]


def test_bad_steering_references_are_4xx_and_fail_alone(
    servers: dict[str, ServerProcess], default_lm: LoadedModel
) -> None:
    url = servers["vllm"].url
    residual = last_token_activations(default_lm, ["Q: big\nA: small"])["residual"][0]
    vector = TaskVector("contrastive", "add_last", {"residual": residual}, [LAYER], 1.0, default_lm.fingerprint)
    task = import_vector(servers["vllm"], vector)
    good = {"prompt": "Q: hot\nA:", "max_new_tokens": 8, "steering": [{"task": task}]}
    alone = httpx.post(f"{url}/v1/generate", json=good, timeout=120).json()["text"]
    bad = [
        ({"task": task, "layers": [99]}, 422),
        ({"task": "task-" + "0" * 24}, 404),
    ]
    for entry, status in bad:
        responses = post_all(url, "/v1/generate", [good, {**good, "steering": [entry]}])
        assert responses[0].status_code == 200 and responses[0].json()["text"] == alone
        assert responses[1].status_code == status, responses[1].text


def test_a_vllm_server_serves_and_computes_context_tuning(
    servers: dict[str, ServerProcess], default_lm: LoadedModel
) -> None:
    """A KV prefix (context tuning's vector: a few-shot prompt's keys and values, moved as training moves them)
    imported into both servers answers the same on each, and not as the plain model does; a vLLM server registers
    `context_tuning` tasks and keeps it among `auto`'s default candidates."""
    demos, test = split_task(load_task("antonyms"), 6, 3, seed=1)
    vector = noised_prefix(default_lm, demos, seed=0, noise=0.05)
    task = {name: import_vector(server, vector) for name, server in servers.items()}

    def answers(server: str, steered: bool) -> list[str]:
        steering = [{"task": task[server]}] if steered else []
        bodies = [{"prompt": render_query(DEFAULT_TEMPLATE, d.input), "steering": steering} for d in test]
        bodies = [{**body, "max_new_tokens": ANSWER_TOKENS, "stop": []} for body in bodies]
        responses = post_all(servers[server].url, "/v1/generate", bodies)
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        return [r.json()["text"] for r in responses]

    assert answers("vllm", True) == answers("transformers", True) != answers("vllm", False)

    url = servers["vllm"].url
    pairs = [{"input": d.input, "output": d.output} for d in demos]
    for body in ({"method": "context_tuning"}, {"method": "auto"}):
        created = httpx.post(f"{url}/v1/tasks", json={**body, "demonstrations": pairs}, timeout=60)
        assert created.status_code in (200, 201, 202), created.text
        info = httpx.get(f"{url}/v1/tasks/{created.json()['id']}", timeout=60).json()
        if body["method"] == "auto":
            assert "context_tuning" in info["options"]["candidates"]
        httpx.delete(f"{url}/v1/tasks/{created.json()['id']}", timeout=60)
