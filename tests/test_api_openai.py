"""The OpenAI-compatible endpoints, driven by the official `openai` package against a real server process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from steering.tasks.answer_end import AnswerEnd
from tests.api_helpers import ANTONYMS, CAPITALS, task_body, wait_task_sync
from tests.conftest import ServerProcess, start_server

PROMPT = "Q: hot\nA:"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("openai")
    env = {
        "STEER_MODEL": "tiny:llama",
        "STEER_DATA_DIR": str(tmp / "data"),
        "STEER_REDIS_URL": "",
        "STEER_API_KEYS": "",
        "STEER_BATCH_WINDOW_MS": "2",
    }
    process = start_server(env, tmp / "server.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tasks(http: httpx.Client) -> dict[str, str]:
    ids = {
        name: http.post("/v1/tasks", json=task_body(pairs)).json()["id"]
        for name, pairs in (("antonyms", ANTONYMS), ("capitals", CAPITALS))
    }
    for task_id in ids.values():
        assert wait_task_sync(http, task_id)["status"] == "ready"
    return ids


@pytest.fixture(scope="module")
def model_name(http: httpx.Client) -> str:
    return http.get("/readyz").json()["model"]


def native(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_models(client: openai.OpenAI, model_name: str) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [model_name]
    assert models.data[0].object == "model"


def test_completions_match_native_generate(
    client: openai.OpenAI, http: httpx.Client, tasks: dict[str, str], model_name: str
) -> None:
    plain = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=12, temperature=0)
    assert plain.object == "text_completion" and plain.model == model_name
    choice = plain.choices[0]
    assert choice.text == native(http, prompt=PROMPT, max_new_tokens=12)["text"]
    assert choice.finish_reason == "length"
    assert plain.usage.completion_tokens == 12 and plain.usage.total_tokens == plain.usage.prompt_tokens + 12

    # Naming a task without `stop`: the answer ends where the task's demonstrated answers end.
    steering = [{"task": tasks["antonyms"], "strength": 2.0}]
    steered = client.completions.create(
        model=model_name, prompt=PROMPT, max_tokens=12, temperature=0, extra_body={"steering": steering}
    )
    rule = AnswerEnd.model_validate(http.get(f"/v1/tasks/{tasks['antonyms']}").json()["answer_end"])
    limit = min(12, rule.max_tokens or 12)
    free = native(http, prompt=PROMPT, max_new_tokens=limit, steering=steering)["text"]
    assert steered.choices[0].text == rule.apply(free) != choice.text
    unended = client.completions.create(
        model=model_name, prompt=PROMPT, max_tokens=12, temperature=0, stop=[], extra_body={"steering": steering}
    )
    assert unended.choices[0].text == native(http, prompt=PROMPT, max_new_tokens=12, steering=steering)["text"]

    zero = client.completions.create(
        model=model_name,
        prompt=PROMPT,
        max_tokens=12,
        temperature=0,
        stop=[],
        extra_body={"steering": [{"task": tasks["antonyms"], "strength": 0}]},
    )
    assert zero.choices[0].text == choice.text

    echoed = client.completions.create(model=model_name, prompt=[PROMPT], max_tokens=12, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + choice.text

    stopped = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=12, temperature=0, stop=["\n"])
    assert stopped.choices[0].text == choice.text.split("\n")[0]


def test_completions_stream(client: openai.OpenAI, tasks: dict[str, str], model_name: str) -> None:
    kwargs = {
        "model": model_name,
        "prompt": PROMPT,
        "max_tokens": 16,
        "temperature": 0,
        "extra_body": {"steering": [{"task": tasks["capitals"]}]},
    }
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert len(chunks) > 2
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_completions_match_native_generate(
    client: openai.OpenAI, http: httpx.Client, tasks: dict[str, str], model_name: str
) -> None:
    messages = [{"role": "system", "content": "answer with one word"}, {"role": "user", "content": "hot"}]
    steering = [{"task": tasks["antonyms"], "strength": 1.5}]
    chat = client.chat.completions.create(
        model=model_name, messages=messages, max_tokens=10, temperature=0, extra_body={"steering": steering}
    )
    assert chat.object == "chat.completion"
    message = chat.choices[0].message
    assert message.role == "assistant"
    assert message.content == native(http, messages=messages, max_new_tokens=10, steering=steering)["text"]
    plain = client.chat.completions.create(model=model_name, messages=messages, max_tokens=10, temperature=0)
    assert plain.choices[0].message.content == native(http, messages=messages, max_new_tokens=10)["text"]
    assert plain.choices[0].message.content != message.content

    stream = client.chat.completions.create(
        model=model_name,
        messages=messages,
        max_tokens=10,
        temperature=0,
        stream=True,
        extra_body={"steering": steering},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == message.content
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason
    assert {c.object for c in chunks} == {"chat.completion.chunk"}

    # Content given as a list of parts, and the newer max_completion_tokens field.
    parts = [messages[0], {"role": "user", "content": [{"type": "text", "text": "hot"}]}]
    again = client.chat.completions.create(
        model=model_name, messages=parts, max_completion_tokens=10, temperature=0, extra_body={"steering": steering}
    )
    assert again.choices[0].message.content == message.content


def test_seeded_sampling_is_reproducible(client: openai.OpenAI, tasks: dict[str, str], model_name: str) -> None:
    kwargs = {
        "model": model_name,
        "messages": [{"role": "user", "content": "red green"}],
        "max_tokens": 16,
        "temperature": 1.0,
        "seed": 42,
        "extra_body": {"steering": [{"task": tasks["capitals"]}]},
    }
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    assert client.chat.completions.create(**kwargs).choices[0].message.content == first


def test_errors_reach_the_client_as_openai_errors(
    client: openai.OpenAI, tasks: dict[str, str], model_name: str
) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(
            model=model_name, prompt=PROMPT, max_tokens=4, extra_body={"steering": [{"task": "task-nope"}]}
        )
    assert missing.value.status_code == 404
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(
            model=model_name,
            prompt=PROMPT,
            max_tokens=4,
            extra_body={"steering": [{"task": tasks["antonyms"], "strength": 1e6}]},
        )
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "x"}], n=2)
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model=model_name, prompt=PROMPT, max_tokens=100_000)


def test_a_model_not_served_here_is_model_not_found(client: openai.OpenAI, http: httpx.Client, model_name: str) -> None:
    chat = [{"role": "user", "content": "hot"}]
    for call in (
        lambda: client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=2),
        lambda: client.chat.completions.create(model="gpt-4", messages=chat, max_tokens=2),
        lambda: list(client.chat.completions.create(model="gpt-4", messages=chat, max_tokens=2, stream=True)),
        lambda: client.completions.create(model=model_name + "x", prompt=PROMPT, max_tokens=2),
    ):
        with pytest.raises(openai.NotFoundError) as refused:
            call()
        assert refused.value.code == "model_not_found" and refused.value.param == "model"
        assert "gpt-4" in refused.value.message or model_name in refused.value.message
    # The served id (as /v1/models lists it) and a request that names no model are both the served model.
    assert client.completions.create(model=model_name, prompt=PROMPT, max_tokens=2).model == model_name
    unnamed = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
    assert unnamed.status_code == 200 and unnamed.json()["model"] == model_name


def test_model_aliases() -> None:
    from app.openai.serving import model_names

    hub = "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert model_names(hub, hub) == {hub, "SmolLM2-360M-Instruct"}
    assert model_names("/models/my-llama/", "/models/my-llama/") == {"/models/my-llama/", "my-llama"}
    assert model_names("SmolLM2-135M-Instruct", "default") == {"SmolLM2-135M-Instruct", "default"}
    assert model_names("tiny:llama", "tiny:llama") == {"tiny:llama"}


# Every OpenAI field the server cannot honour, with a value that asks for it, and its neutral value.
UNHONOURED_COMPLETION_FIELDS: list[tuple[str, Any, Any]] = [
    ("best_of", 3, 1),
    ("suffix", " and so on", ""),
    ("n", 2, 1),
    ("logprobs", 2, None),
    ("frequency_penalty", 0.5, 0),
    ("presence_penalty", -0.5, 0.0),
    ("logit_bias", {"50256": -100}, {}),
]
UNHONOURED_CHAT_FIELDS: list[tuple[str, Any, Any]] = [
    ("n", 3, 1),
    ("logprobs", True, False),
    ("top_logprobs", 2, 0),
    ("frequency_penalty", 1.0, 0),
    ("presence_penalty", 1.0, 0),
    ("logit_bias", {"1": 5}, {}),
    ("tools", [{"type": "function", "function": {"name": "f"}}], []),
    ("tool_choice", "required", "none"),
    ("functions", [{"name": "f"}], []),
    ("function_call", "auto", "none"),
    ("response_format", {"type": "json_object"}, {"type": "text"}),
    ("modalities", ["text", "audio"], ["text"]),
    ("audio", {"voice": "alloy", "format": "wav"}, None),
    ("prediction", {"type": "content", "content": "cold"}, None),
    ("reasoning_effort", "high", None),
    ("verbosity", "low", None),
    ("web_search_options", {}, None),
    ("moderation", {"model": "omni-moderation-latest"}, None),
    ("store", True, False),
    ("service_tier", "flex", "auto"),
]
UNHONOURED_MESSAGE_FIELDS: list[tuple[str, Any, Any]] = [
    ("name", "bob", None),
    ("tool_calls", [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}], []),
    ("function_call", {"name": "f", "arguments": "{}"}, None),
    ("audio", {"id": "a1"}, None),
    ("refusal", "no", None),
]


def test_openai_fields_the_server_cannot_honour_are_refused_by_name(http: httpx.Client, model_name: str) -> None:
    completion = {"model": model_name, "prompt": PROMPT, "max_tokens": 2, "temperature": 0}
    chat = {**completion, "messages": [{"role": "user", "content": "hot"}]}
    del chat["prompt"]
    cases = [
        ("/v1/completions", completion, field, asks, neutral) for field, asks, neutral in UNHONOURED_COMPLETION_FIELDS
    ]
    cases += [("/v1/chat/completions", chat, field, asks, neutral) for field, asks, neutral in UNHONOURED_CHAT_FIELDS]
    for path, body, field, asks, neutral in cases:
        refused = http.post(path, json={**body, field: asks})
        assert refused.status_code == 422, (path, field, refused.text)
        error = refused.json()["error"]
        assert error["type"] == "unsupported_parameter" and error["message"].startswith(f"{field}: "), error
        accepted = http.post(path, json={**body, field: neutral})
        assert accepted.status_code == 200, (path, field, accepted.text)
    for field, asks, neutral in UNHONOURED_MESSAGE_FIELDS:
        message = {"role": "assistant", "content": "cold"}
        messages = [{"role": "user", "content": "hot"}, {**message, field: asks}]
        refused = http.post("/v1/chat/completions", json={**chat, "messages": messages})
        assert refused.status_code == 422, (field, refused.text)
        assert refused.json()["error"]["message"].startswith(f"messages.1.{field}: "), refused.text
        messages[1] = {**message, field: neutral}
        assert http.post("/v1/chat/completions", json={**chat, "messages": messages}).status_code == 200, field

    # stream_options goes with a stream only (as OpenAI answers); labels and caching hints change no output.
    options = {"stream_options": {"include_usage": True}}
    assert http.post("/v1/chat/completions", json={**chat, **options}).status_code == 422
    with http.stream("POST", "/v1/chat/completions", json={**chat, **options, "stream": True}) as streamed:
        assert streamed.status_code == 200 and "[DONE]" in streamed.read().decode()
    labels = {"user": "u-1", "metadata": {"team": "a"}, "safety_identifier": "s", "prompt_cache_key": "k"}
    labelled = http.post("/v1/chat/completions", json={**chat, **labels, "parallel_tool_calls": False})
    assert labelled.status_code == 200, labelled.text
    # Fields outside the OpenAI API are still accepted and ignored (clients and frameworks send many).
    assert http.post("/v1/completions", json={**completion, "top_k": 5}).status_code == 200


def test_echo_in_a_stream_sends_the_prompt_first(client: openai.OpenAI, model_name: str) -> None:
    kwargs = {"model": model_name, "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "echo": True}
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert chunks[0].choices[0].text == PROMPT
    assert "".join(c.choices[0].text for c in chunks) == whole
