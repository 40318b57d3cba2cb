"""KV prefixes (`kv_prefix` vectors, computed by `context_tuning`): the engine puts them ahead of a row's prompt.

The invariant with teeth: a prefix that is the KV cache of a text, untrained, makes a row answer exactly as the
text followed by the prompt does, alone or among other rows that join and leave, with prefill in chunks.
"""

from __future__ import annotations

import asyncio
import random
import string
from pathlib import Path

import httpx
import pytest
import torch
from transformers import DynamicCache

from steering.generation.rows import GenerationRequest
from steering.generation.transformers.engine import Engine
from steering.methods import compute_vector
from steering.methods.capture import next_token_logprobs
from steering.model.loading import LoadedModel
from steering.steer.inject import BatchSteering, SteeringError, SteeringTerm
from steering.vectors.errors import ModelMismatch, VectorImportError
from steering.vectors.modes import MAX_PREFIX_TOKENS
from steering.vectors.task_vector import ActivationScale, TaskVector, check_for_model, check_norms
from steering.wire.protocol import Demonstration
from tests.api_helpers import (
    ANTONYMS,
    CAPITALS,
    OCTET,
    assert_error,
    running_app,
    services_of,
    settings,
    task_body,
    wait_task,
)
from tests.test_scheduler import PROMPTS, run, solo, synthetic_vector

PREFIX_TEXTS = ["Q: hot\nA: cold\n\nQ: big\nA: small\n\n", "one two three four five six seven eight nine ten\n"]


def text_cache(lm: LoadedModel, ids: list[int], start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values [layers, kv_heads, tokens, head_dim] of `ids` alone at positions start, start + 1, ..."""
    cache = DynamicCache()  # no config: sliding-window layers keep every column too
    positions = (start + torch.arange(len(ids), device=lm.device))[None]
    with torch.no_grad():
        lm.model(
            torch.tensor([ids], device=lm.device),
            position_ids=positions,
            **lm.arch.cache_argument(cache),
            use_cache=True,
        )
    return torch.cat([layer.keys for layer in cache.layers]), torch.cat([layer.values for layer in cache.layers])


def cache_vector(lm: LoadedModel, keys: torch.Tensor, values: torch.Tensor) -> TaskVector:
    """Keys and values [layers, kv_heads, tokens, head_dim] as a `kv_prefix` vector."""
    tensors = {"prefix_keys": keys, "prefix_values": values}
    return TaskVector("context_tuning", "kv_prefix", tensors, list(range(lm.arch.num_layers)), 1.0, lm.fingerprint)


def text_prefix(lm: LoadedModel, text: str) -> tuple[TaskVector, list[int]]:
    """The untrained prefix of `text` (its cache, as a vector) and the text's token ids."""
    ids = Engine(lm).encode(text)
    return cache_vector(lm, *text_cache(lm, ids)), ids


async def ready_prefix_tasks(client: httpx.AsyncClient) -> tuple[list[str], list[TaskVector]]:
    """Two context-tuning tasks (antonyms, capitals) registered and ready: their ids and stored vectors."""
    ids, vectors = [], []
    for pairs in (ANTONYMS, CAPITALS):
        body = task_body(pairs, method="context_tuning", options={"k_shot": 2, "epochs": 2})
        ids.append((await client.post("/v1/tasks", json=body)).json()["id"])
    for task_id in ids:
        info = await wait_task(client, task_id)
        assert info["status"] == "ready" and info["method"] == "context_tuning", info
        vectors.append(TaskVector.from_bytes((await client.get(f"/v1/tasks/{task_id}/vector")).content))
        assert vectors[-1].mode == "kv_prefix"
    return ids, vectors


def test_an_untrained_prefix_answers_as_its_text_does(tiny_lm: LoadedModel) -> None:
    engine = Engine(tiny_lm)
    vector, text_ids = text_prefix(tiny_lm, PREFIX_TEXTS[0])
    for prompt in PROMPTS[:4]:
        ids = engine.encode(prompt)
        prefixed = solo(engine, GenerationRequest(ids, (SteeringTerm(vector, 1.0),), max_new_tokens=8))
        assert prefixed == solo(engine, GenerationRequest(text_ids + ids, max_new_tokens=8)), prompt


@pytest.mark.parametrize(("chunk", "priority"), [(3, 6), (16, 0), (1024, 6)])
def test_prefixed_rows_among_others_that_join_and_leave(tiny_llama: LoadedModel, chunk: int, priority: int) -> None:
    """Rows with two different prefixes (one also steered by a hook) beside plain and steered rows."""
    engine = Engine(tiny_llama)
    (first, first_ids), (second, second_ids) = (text_prefix(tiny_llama, t) for t in PREFIX_TEXTS)
    added = synthetic_vector(tiny_llama, "add_from_last", 5)
    plans = [
        ((SteeringTerm(first, 1.0),), first_ids),
        ((), []),
        ((SteeringTerm(second, 1.0),), second_ids),
        ((SteeringTerm(first, 1.0), SteeringTerm(added, 0.6)), first_ids),
        ((SteeringTerm(added, 0.6),), []),
        ((SteeringTerm(second, 1.0),), second_ids),
    ]
    requests, expected = [], []
    for (terms, text_ids), prompt, n in zip(plans, PROMPTS, [6, 9, 4, 7, 5, 10], strict=False):
        ids = engine.encode(prompt)
        requests.append(GenerationRequest(ids, terms, max_new_tokens=n))
        hooks = tuple(t for t in terms if t.vector.mode != "kv_prefix")
        expected.append(solo(engine, GenerationRequest(text_ids + ids, hooks, max_new_tokens=n)))
    arrivals = list(zip([0, 0, 1, 1, 3, 4], requests, strict=True))
    results, streamed, sizes = run(engine, arrivals, chunk=chunk, max_rows=4, priority=priority)
    assert [r.token_ids for r in results] == expected
    assert [r.text for r in results] == streamed
    assert max(sizes) > 1


def test_strength_scales_the_prefix_values_and_zero_is_no_prefix(tiny_llama: LoadedModel) -> None:
    engine = Engine(tiny_llama)
    vector, _ = text_prefix(tiny_llama, PREFIX_TEXTS[1])
    ids = engine.encode(PROMPTS[1])
    plain = solo(engine, GenerationRequest(ids, max_new_tokens=8))
    assert solo(engine, GenerationRequest(ids, (SteeringTerm(vector, 0.0),), max_new_tokens=8)) == plain
    scaled = [solo(engine, GenerationRequest(ids, (SteeringTerm(vector, s),), max_new_tokens=8)) for s in (1.0, 3.0)]
    assert scaled[0] != scaled[1]


def test_plans_a_prefix_cannot_take_are_refused(tiny_llama: LoadedModel) -> None:
    arch = tiny_llama.arch
    vector, _ = text_prefix(tiny_llama, PREFIX_TEXTS[0])
    other, _ = text_prefix(tiny_llama, PREFIX_TEXTS[1])
    narrow = TaskVector(
        "context_tuning",
        "kv_prefix",
        {name: tensor[:, :1] for name, tensor in vector.tensors.items()},  # one key/value head too few
        vector.layers,
        1.0,
        vector.fingerprint,
    )
    refused = {
        "compose several first": [SteeringTerm(vector, 1.0), SteeringTerm(other, 1.0)],
        "takes no other `layers`": [SteeringTerm(vector, 1.0, (0,))],
        "this model's cache needs": [SteeringTerm(narrow, 1.0)],
    }
    for reason, plan in refused.items():
        with pytest.raises(SteeringError, match=reason):
            BatchSteering.build([plan], arch, 4, tiny_llama.device, tiny_llama.dtype)
    with pytest.raises(ValueError, match="generation engine"):
        next_token_logprobs(tiny_llama, ["Q: hot\nA:"], [[SteeringTerm(vector, 1.0)]])
    # Two prefixes in one batch are fine (one per row), and so is naming every layer, in any order.
    every_layer = tuple(range(arch.num_layers))
    plans = [[SteeringTerm(vector, 1.0, every_layer[::-1])], [SteeringTerm(other, 1.0, every_layer)]]
    assert BatchSteering.build(plans, arch, 4, tiny_llama.device, tiny_llama.dtype) is None


def test_a_prefix_file_round_trips_and_is_checked_against_the_model(tiny_llama: LoadedModel) -> None:
    vector, ids = text_prefix(tiny_llama, PREFIX_TEXTS[0])
    read = TaskVector.from_bytes(vector.to_bytes())
    assert read.mode == "kv_prefix" and read.prefix_tokens == len(ids)
    assert all(torch.equal(read.tensors[n], vector.tensors[n]) for n in vector.tensors)
    check_for_model(read, tiny_llama.arch)
    keys, values = vector.tensors["prefix_keys"], vector.tensors["prefix_values"]
    uneven = {"prefix_keys": keys, "prefix_values": values[:, :, :-1]}
    too_long = {n: t[:, :, :1].expand(-1, -1, MAX_PREFIX_TOKENS + 1, -1) for n, t in vector.tensors.items()}
    for tensors, error in ((uneven, ModelMismatch), (too_long, VectorImportError)):
        bad = TaskVector("context_tuning", "kv_prefix", tensors, vector.layers, 1.0, vector.fingerprint)
        with pytest.raises(error):
            check_for_model(TaskVector.from_bytes(bad.to_bytes()), tiny_llama.arch)


COUNTRIES = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Egypt", "Cairo"),
    ("Peru", "Lima"),
    ("Kenya", "Nairobi"),
    ("Chile", "Santiago"),
    ("Cuba", "Havana"),
    ("Iran", "Tehran"),
    ("Greece", "Athens"),
    ("Norway", "Oslo"),
]


def test_context_tuning_trains_the_prefix_on_held_out_loss(tiny_llama: LoadedModel) -> None:
    demos = [Demonstration(input=a, output=b) for a, b in COUNTRIES]
    vector = compute_vector(tiny_llama, demos, "context_tuning", options={"k_shot": 3, "epochs": 10, "lr": 0.2})
    metrics = vector.metrics
    assert vector.mode == "kv_prefix" and vector.layers == list(range(tiny_llama.arch.num_layers))
    assert vector.prefix_tokens == metrics["prefix_tokens"] and metrics["prefix_shots"] == 3
    # The random model learns the mapping's format: the prefix's held-out loss falls well below its untrained one.
    assert metrics["best_dev_loss"] < 0.9 * metrics["first_dev_loss"]
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"] <= 10
    assert {"dev_steered_exact", "dev_few_shot_exact", "dev_zero_shot_exact"} <= set(metrics)
    check_for_model(vector, tiny_llama.arch)
    with pytest.raises(ValueError, match="no `layer`"):
        compute_vector(tiny_llama, demos, "context_tuning", options={"layer": 1})


async def test_prefix_tasks_over_http(tmp_path: Path) -> None:
    """Registered, generated with, refused where a plan cannot take them (422, nothing else changed), and kept
    out of GGUF files, through the service."""
    async with running_app(settings(tmp_path)) as (_, client):
        ids, _ = await ready_prefix_tasks(client)
        one = [{"task": ids[0], "strength": 1.0}]
        plain = await client.post("/v1/generate", json={"prompt": PROMPTS[0], "max_new_tokens": 6})
        steered = await client.post("/v1/generate", json={"prompt": PROMPTS[0], "max_new_tokens": 6, "steering": one})
        assert plain.status_code == steered.status_code == 200, steered.text
        assert steered.json()["text"] != plain.json()["text"], "the prefix changes nothing: the test could not tell"
        body = {"prompt": PROMPTS[0], "max_new_tokens": 6, "steering": [{**one[0], "layers": [0]}]}
        error = assert_error(await client.post("/v1/generate", json=body), 422, "invalid_steering")
        assert "takes no other `layers`" in error["message"], error
        dimmed = {"prompt": PROMPTS[0], "max_new_tokens": 6, "steering": [*one, {"task": ids[1], "strength": 0.0}]}
        assert (await client.post("/v1/generate", json=dimmed)).json()["text"] == steered.json()["text"]
        again = await client.post("/v1/generate", json={"prompt": PROMPTS[0], "max_new_tokens": 6, "steering": one})
        assert again.json()["text"] == steered.json()["text"]
        gguf = await client.get(f"/v1/tasks/{ids[0]}/vector", params={"format": "gguf"})
        assert gguf.status_code == 422 and "kv_prefix" in gguf.text, gguf.text


async def test_a_prefix_takes_its_place_in_the_context_window(tmp_path: Path) -> None:
    """tiny:gpt2 has 512 learned positions: a request whose prefix, prompt and new tokens pass them is a 422 and
    spoils no batch; with room left it is served."""
    async with running_app(settings(tmp_path, model="tiny:gpt2", batch_window_ms=50.0)) as (app, client):
        lm = services_of(app).lm
        line = PREFIX_TEXTS[1]
        vector, _ = text_prefix(lm, line * (300 // len(Engine(lm).encode(line))))
        assert 200 < vector.prefix_tokens < 400
        imported = await client.post("/v1/tasks/import", content=vector.to_bytes(), headers=OCTET)
        assert imported.status_code in (200, 201), imported.text
        steering = [{"task": imported.json()["id"], "strength": 1.0}]
        prompt = "Q: hot\nA:"
        prompt_tokens = len(Engine(lm).encode(prompt))
        room = lm.context_window - vector.prefix_tokens - prompt_tokens
        fine = {"prompt": prompt, "max_new_tokens": 4}
        alone = await client.post("/v1/generate", json=fine)
        past, good = await asyncio.gather(
            client.post("/v1/generate", json={**fine, "max_new_tokens": room + 1, "steering": steering}),
            client.post("/v1/generate", json=fine),
        )
        error = assert_error(past, 422, "context_length_exceeded")
        assert str(vector.prefix_tokens + prompt_tokens) in error["message"], error
        assert good.status_code == 200 and good.json()["text"] == alone.json()["text"]
        served = await client.post("/v1/generate", json={**fine, "max_new_tokens": room, "steering": steering})
        assert served.status_code == 200, served.text


@pytest.mark.slow
def test_without_held_out_demonstrations_a_prefix_is_not_scored_on_its_own_answers(default_lm: LoadedModel) -> None:
    """Five demonstrations leave none to hold out: each is scored on the prefix without its own columns. Answers
    no model can guess (random letters) then score 0, where seeing them in the prefix lets the model copy them."""
    rng = random.Random(0)

    def letters(n: int) -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))

    demos = [Demonstration(input=letters(4), output=letters(7)) for _ in range(5)]
    metrics = compute_vector(default_lm, demos, "context_tuning", options={"epochs": 1}).metrics
    assert metrics["held_out"] is False and metrics["prefix_shots"] == 5
    assert metrics["dev_steered_exact"] == 0.0 and metrics["dev_steered_accuracy"] == 0.0


def test_a_prefix_value_past_half_precision_is_refused(tiny_llama: LoadedModel) -> None:
    vector, _ = text_prefix(tiny_llama, PREFIX_TEXTS[0])
    layers = tiny_llama.arch.num_layers
    scale = ActivationScale(residual=torch.ones(layers), heads=torch.ones(layers))  # a prefix is bounded apart
    check_norms(vector, scale)
    vector.tensors["prefix_values"][-1, 0, 1, 0] = 7e4
    with pytest.raises(VectorImportError, match="float16"):
        check_norms(vector, scale)
