"""A task's prompts against the model's context window: measured before a job starts, refused clearly inside one."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steering.methods import compute_vector
from steering.methods.common import greedy_answers
from steering.methods.prompt_length import PromptTooLong, longest_prompt_tokens
from steering.methods.registry import most_shots
from steering.model.loading import LoadedModel, load_model
from steering.tasks.answer_end import AnswerEnd
from steering.tasks.templates import DEFAULT_TEMPLATE, sample_few_shot_prompts
from steering.wire.protocol import Demonstration, Template


@pytest.fixture(scope="module")
def tiny_gpt2() -> LoadedModel:
    return load_model("tiny:gpt2")  # learned positions: 512 of them, an IndexError past them


def test_shots_are_those_each_computation_uses() -> None:
    assert most_shots("task_vector", {"k_shot": 5}, 40) == 10  # the few-shot baseline's 10
    assert most_shots("task_vector", {"k_shot": 16}, 40) == 16
    assert most_shots("task_vector", {"k_shot": "16"}, 40) == 16  # read as the method's options read it
    assert most_shots("auto", {"method_options": {"soft_injection": {"k_shot": 24}}}, 40) == 24
    assert (
        most_shots("auto", {"candidates": ["task_vector"], "method_options": {"soft_injection": {"k_shot": 24}}}, 40)
        == 10
    )
    assert most_shots("task_vector", {}, 4) == 3  # a prompt never shows its own query
    assert most_shots("task_vector", {}, 1) == 0


def long_demos(n: int, words: int, answer_words: int = 1) -> list[Demonstration]:
    return [Demonstration(input=f"word {'long ' * words}{i}", output=" ".join(["x"] * answer_words)) for i in range(n)]


def test_a_method_refuses_prompts_past_the_window_by_name(tiny_gpt2: LoadedModel) -> None:
    with pytest.raises(PromptTooLong, match=r"takes \d+ tokens, and tiny:gpt2 reads at most 512"):
        compute_vector(tiny_gpt2, long_demos(20, 20), "task_vector")


def test_answers_teacher_forced_after_a_prompt_count_too(tiny_gpt2: LoadedModel) -> None:
    """Soft injection reads heads over whole answers: prompts that fit alone but not with their answers are refused
    by name, not with an IndexError from the position embedding."""
    demos = [Demonstration(input=f"a b {i}", output=" ".join(["x"] * 300)) for i in range(2)]
    with pytest.raises(PromptTooLong, match="reads at most 512"):
        compute_vector(tiny_gpt2, demos, "soft_injection", options={"steps": 1, "num_prompts": 2, "k_shot": 1})


def test_a_scored_answer_ends_at_the_end_of_the_context(tiny_gpt2: LoadedModel) -> None:
    tokenizer = tiny_gpt2.tokenizer
    prompt = "x " * 250  # about 500 tokens: 16 more would pass the 512 positions
    room = 512 - len(tokenizer(prompt)["input_ids"])
    assert 0 < room < 16
    end = AnswerEnd()  # no rule: only the token bound ends an answer
    (answer,) = greedy_answers(tiny_gpt2, [prompt], [], end, max_new_tokens=16)
    assert len(tokenizer(answer, add_special_tokens=False)["input_ids"]) <= room
    with pytest.raises(PromptTooLong, match="and 1 generated after it"):
        greedy_answers(tiny_gpt2, ["x " * 300], [], end)


def test_the_estimate_never_counts_a_query_among_its_own_shots(tiny_gpt2: LoadedModel) -> None:
    demos = [Demonstration(input="short", output="y"), Demonstration(input="long " * 100, output="y")]
    tokenizer = tiny_gpt2.tokenizer
    prompts = sample_few_shot_prompts(DEFAULT_TEMPLATE, demos, demos, 1, random.Random(0))
    longest = max(len(tokenizer(p)["input_ids"]) for p in prompts)
    assert longest_prompt_tokens(tokenizer, DEFAULT_TEMPLATE, demos, 1) == longest + 1  # "y"


texts = st.text(alphabet="abc xyz\n.", min_size=1, max_size=30)


@settings(max_examples=25, deadline=None)
@given(
    pairs=st.lists(st.tuples(texts, texts), min_size=2, max_size=12),
    shots=st.integers(1, 10),
    seed=st.integers(0, 100),
    separator=st.sampled_from(["\n\n", "\n", " | "]),
)
def test_no_sampled_prompt_with_its_answer_is_longer_than_the_estimate(
    tiny_gpt2: LoadedModel, pairs: list[tuple[str, str]], shots: int, seed: int, separator: str
) -> None:
    demos = [Demonstration(input=a, output=b) for a, b in pairs]
    template = Template(**{**DEFAULT_TEMPLATE.model_dump(), "separator": separator})
    tokenizer = tiny_gpt2.tokenizer
    bound = longest_prompt_tokens(tokenizer, template, demos, shots)
    prompts = sample_few_shot_prompts(template, demos, demos, shots, random.Random(seed))
    for prompt, demo in zip(prompts, demos, strict=True):
        answer = len(tokenizer(demo.output, add_special_tokens=False)["input_ids"])
        assert len(tokenizer(prompt)["input_ids"]) + answer <= bound
