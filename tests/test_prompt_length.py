"""A task's prompts against the model's context window: measured before a job starts, refused clearly inside one."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steering.methods import compute_vector
from steering.methods.common import most_shots
from steering.methods.prompt_length import PromptTooLong, longest_prompt_tokens
from steering.model.loading import LoadedModel, load_model
from steering.tasks.templates import DEFAULT_TEMPLATE, sample_few_shot_prompts
from steering.wire.protocol import Demonstration, Template


@pytest.fixture(scope="module")
def tiny_gpt2() -> LoadedModel:
    return load_model("tiny:gpt2")  # learned positions: 512 of them


def test_shots_are_the_baseline_or_the_largest_k_shot_but_no_more_than_there_are() -> None:
    assert most_shots({"k_shot": 5}, 40) == 10  # the few-shot baseline's 10
    assert most_shots({"k_shot": 16}, 40) == 16
    assert most_shots({"method_options": {"soft_injection": {"k_shot": 24}}}, 40) == 24
    assert most_shots({}, 3) == 3


def test_a_method_refuses_prompts_past_the_window_by_name(tiny_gpt2: LoadedModel) -> None:
    demos = [Demonstration(input=f"word {'long ' * 20}{i}", output="x") for i in range(20)]
    with pytest.raises(PromptTooLong, match=r"takes \d+ tokens and tiny:gpt2 reads at most 512"):
        compute_vector(tiny_gpt2, demos, "task_vector")


texts = st.text(alphabet="abc xyz\n.", min_size=1, max_size=30)


@settings(max_examples=25, deadline=None)
@given(
    pairs=st.lists(st.tuples(texts, texts), min_size=2, max_size=12),
    shots=st.integers(1, 10),
    seed=st.integers(0, 100),
    separator=st.sampled_from(["\n\n", "\n", " | "]),
)
def test_no_sampled_prompt_is_longer_than_the_estimate(
    tiny_gpt2: LoadedModel, pairs: list[tuple[str, str]], shots: int, seed: int, separator: str
) -> None:
    demos = [Demonstration(input=a, output=b) for a, b in pairs]
    template = Template(**{**DEFAULT_TEMPLATE.model_dump(), "separator": separator})
    bound = longest_prompt_tokens(tiny_gpt2, template, demos, shots)
    prompts = sample_few_shot_prompts(template, demos, demos, shots, random.Random(seed))
    assert max(len(tiny_gpt2.tokenizer(p)["input_ids"]) for p in prompts) <= bound
