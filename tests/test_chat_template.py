"""Tasks in the model's chat template (`template: "chat"`): the preset renders the chat prompts that chat
requests send, few-shot prompts are multi-turn chats, and a task registered with it computes and steers
/v1/chat/completions; a model without a chat template says so (422 no_chat_template)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio
from transformers import PreTrainedTokenizerFast

from app.tasks import task_id_for
from steering.model.tiny import build_tiny_tokenizer
from steering.tasks.answer_end import learn_answer_end
from steering.tasks.templates import (
    DEFAULT_TEMPLATE,
    NoChatTemplate,
    answer_text,
    chat_template,
    few_shot_prompt,
    render_query,
)
from steering.wire.protocol import Demonstration, TaskCreate, Template
from tests.api_helpers import ANTONYMS, assert_error, demos, running_app, services_of, settings, task_body, wait_task

# A chat template with a default system turn and closing tags (the shape of SmolLM2's and Qwen's).
SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nBe brief.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Every turn repeats the whole history's count: turns cannot be cut apart, whole one-turn chats are used.
COUNTING_TEMPLATE = (
    "[{{ messages | length }}]{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
SHOTS = [Demonstration(input=a, output=b) for a, b in ANTONYMS[:3]]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture
def with_template(tokenizer: PreTrainedTokenizerFast) -> Iterator[Callable[[str | None], PreTrainedTokenizerFast]]:
    saved = tokenizer.chat_template

    def use(template: str | None) -> PreTrainedTokenizerFast:
        tokenizer.chat_template = template
        return tokenizer

    yield use
    tokenizer.chat_template = saved


def chat(tokenizer: PreTrainedTokenizerFast, shots: list[Demonstration], query: str) -> str:
    messages = [
        m for d in shots for m in ({"role": "user", "content": d.input}, {"role": "assistant", "content": d.output})
    ]
    messages.append({"role": "user", "content": query})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@pytest.mark.parametrize("source", ["tiny", "system"])
def test_chat_preset_renders_the_chat_prompt_and_multi_turn_few_shot(with_template, source: str) -> None:
    tokenizer = (
        with_template(SYSTEM_TEMPLATE) if source == "system" else with_template(build_tiny_tokenizer().chat_template)
    )
    template = chat_template(tokenizer)
    assert render_query(template, "warm") == chat(tokenizer, [], "warm")
    assert few_shot_prompt(template, SHOTS, "warm") == chat(tokenizer, SHOTS, "warm")
    if source == "system":
        assert template.prefix == "<|im_start|>system\nBe brief.<|im_end|>\n"
        assert few_shot_prompt(template, SHOTS, "warm").count("system") == 1
        assert answer_text(template, SHOTS[0]) == "cold<|im_end|>\n"
    else:
        assert template.prefix == ""
        assert answer_text(template, SHOTS[0]) == "cold\n"
    # The answer ends at the end of the assistant's turn; one-word answers end at a space too.
    rule = learn_answer_end(template, [Demonstration(input=a, output=b) for a, b in ANTONYMS])
    assert rule.apply("cold\n<|user|>big") == "cold" and rule.apply("cold and hot") == "cold"


def test_turns_that_cannot_be_cut_apart_give_one_turn_chats(with_template) -> None:
    tokenizer = with_template(COUNTING_TEMPLATE)
    template = chat_template(tokenizer)
    assert template.prefix == "" and template.separator == ""
    assert render_query(template, "warm") == chat(tokenizer, [], "warm") == "[1]<user>warm<assistant>"
    assert few_shot_prompt(template, SHOTS[:1], "warm") == "[1]<user>hot<assistant>cold[1]<user>warm<assistant>"


def test_no_chat_template(with_template) -> None:
    with pytest.raises(NoChatTemplate, match="no chat template"):
        chat_template(with_template(None))


def test_default_template_ids_unchanged_by_the_prefix_field() -> None:
    """Task ids are content hashes: a template without a prefix hashes as it did before the field existed."""
    import hashlib
    import json

    body = TaskCreate(demonstrations=demos(ANTONYMS), method="task_vector")
    payload = {
        "owner": None,
        "fingerprint": "f",
        "method": "task_vector",
        "options": {},
        "template": {"example": DEFAULT_TEMPLATE.example, "query": DEFAULT_TEMPLATE.query, "separator": "\n\n"},
        "demonstrations": demos(ANTONYMS),
    }
    expected = "task-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    assert task_id_for(None, "f", body, {}) == expected
    prefixed = body.model_copy(update={"template": Template(prefix="<s>")})
    assert task_id_for(None, "f", prefixed, {}) != expected


@pytest_asyncio.fixture(scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple]:
    async with running_app(settings(tmp_path_factory.mktemp("chat"))) as (app, client):
        yield app, client


async def test_register_chat_task_and_steer_chat_completions(api: tuple) -> None:
    app, client = api
    tokenizer = services_of(app).lm.tokenizer
    created = await client.post("/v1/tasks", json=task_body(ANTONYMS, template="chat"))
    assert created.status_code == 202, created.text
    info = await wait_task(client, created.json()["id"])
    assert info["status"] == "ready", info
    assert Template(**info["template"]) == chat_template(tokenizer)
    plain = await client.post("/v1/tasks", json=task_body(ANTONYMS))
    assert plain.json()["id"] != info["id"]  # another template, another task

    model = (await client.get("/readyz")).json()["model"]
    body = {"model": model, "messages": [{"role": "user", "content": "hot"}], "max_tokens": 8, "temperature": 0}
    steered = await client.post("/v1/chat/completions", json={**body, "steering": [{"task": info["id"]}]})
    assert steered.status_code == 200, steered.text
    assert isinstance(steered.json()["choices"][0]["message"]["content"], str)
    # The task's own format: `input` renders the chat prompt, the same prompt the chat request sent.
    native = await client.post("/v1/generate", json={"input": "hot", "steering": [{"task": info["id"]}]})
    assert native.status_code == 200, native.text
    assert native.json()["usage"]["prompt_tokens"] == steered.json()["usage"]["prompt_tokens"]


async def test_chat_template_asked_of_a_model_without_one(api: tuple) -> None:
    app, client = api
    tokenizer = services_of(app).lm.tokenizer
    saved, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        response = await client.post("/v1/tasks", json=task_body(ANTONYMS[:5], template="chat"))
    finally:
        tokenizer.chat_template = saved
    assert_error(response, 422, "no_chat_template")
    invalid = await client.post("/v1/tasks", json=task_body(ANTONYMS, template="chatty"))
    assert_error(invalid, 422)
