"""Where an answer ends: the rule learned from demonstrations, and the verdict on a task's vector."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steering.tasks.answer_end import AnswerEnd, learn_answer_end, template_end
from steering.tasks.templates import DEFAULT_TEMPLATE, answer_text
from steering.tasks.verdict import chance_margin, verdict
from steering.wire.protocol import Demonstration, Template

words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1)
outputs = st.lists(st.lists(words, min_size=1, max_size=4).map(" ".join), min_size=1, max_size=30)
texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
templates = st.sampled_from(
    [DEFAULT_TEMPLATE, Template(example="{input} => {output}", query="{input} =>", separator="\n")]
)


def demos_of(answers: list[str]) -> list[Demonstration]:
    return [Demonstration(input=f"item {i}", output=a) for i, a in enumerate(answers)]


@settings(max_examples=300, deadline=None)
@given(outputs, templates)
def test_no_demonstrated_answer_is_cut(answers: list[str], template: Template) -> None:
    """Whatever the answers look like, the rule they teach leaves each of them whole, as the model writes it."""
    demos = demos_of(answers)
    rule = learn_answer_end(template, demos)
    for demo in demos:
        written = answer_text(template, demo)
        assert rule.apply(written).strip() == demo.output.strip()


@settings(max_examples=300, deadline=None)
@given(outputs, templates, texts, texts)
def test_an_end_once_found_never_moves(answers: list[str], template: Template, text: str, more: str) -> None:
    """A stream may end the answer as soon as the rule cuts: later text never moves the cut, and the cut
    text is itself a whole answer."""
    rule = learn_answer_end(template, demos_of(answers))
    cut = rule.cut(text)
    if cut is not None:
        assert rule.cut(text + more) == cut
        assert rule.cut(text[:cut]) is None
    assert rule.apply(rule.apply(text)) == rule.apply(text)


def test_one_word_answers_stop_after_the_word() -> None:
    rule = learn_answer_end(DEFAULT_TEMPLATE, demos_of(["apple", "pear", "plum", "fig", "kiwi"]))
    assert rule.apply(" apple, pear, plum") == " apple"
    assert rule.apply(" apple pear") == " apple"
    assert rule.apply(" apple.") == " apple"
    assert rule.apply("  apple") == "  apple"  # leading whitespace never ends an answer
    assert rule.apply("\nThe answer") == ""  # the template's own stop still applies from the start


def test_what_the_answers_contain_is_never_a_delimiter() -> None:
    rule = learn_answer_end(DEFAULT_TEMPLATE, demos_of(["a, b", "c, d", "e, f, g", "h, i"]))
    assert "," not in rule.delimiters and ";" in rule.delimiters
    assert rule.max_words == 4  # the answers have 2 or 3 words: one more is allowed
    assert rule.apply(" x, y; z") == " x, y"


def test_fixed_length_answers_end_at_that_length() -> None:
    letters = demos_of(list("abcdefghij"))
    assert learn_answer_end(DEFAULT_TEMPLATE, letters).apply(" hot") == " h"
    assert learn_answer_end(DEFAULT_TEMPLATE, letters[:5]).max_chars is None  # too few to infer a length


def test_few_demonstrations_teach_only_the_template() -> None:
    assert learn_answer_end(DEFAULT_TEMPLATE, demos_of(["one", "two"])) == template_end(DEFAULT_TEMPLATE)


def test_token_bound_from_the_longest_answer() -> None:
    rule = learn_answer_end(DEFAULT_TEMPLATE, demos_of(["a", "bb", "ccc", "dddd"]), lambda d: len(d.output))
    assert rule.max_tokens == 2 * 4 + 2


def test_several_tasks_end_only_where_all_would() -> None:
    words_rule = learn_answer_end(DEFAULT_TEMPLATE, demos_of(["apple", "pear", "plum", "fig"]))
    lists_rule = learn_answer_end(DEFAULT_TEMPLATE, demos_of(["a, b", "c, d", "e, f", "g, h"]))
    both = AnswerEnd.combine([words_rule, lists_rule])
    assert "," not in both.delimiters and both.max_words == 2
    assert both.apply(" x, y z") == " x, y"


def metrics(steered: float, zero: float, few: float, **extra: object) -> dict:
    return {
        "dev_steered_exact": steered,
        "dev_zero_shot_exact": zero,
        "dev_few_shot_exact": few,
        "dev_few_shot_k": 10,
        "dev_size": 10,
        "held_out": True,
        **extra,
    }


@pytest.mark.parametrize(
    ("steered", "few", "rating"),
    [(0.8, 0.6, "better_than_few_shot"), (0.6, 0.6, "as_good_as_few_shot"), (0.4, 0.6, "below_few_shot")],
)
def test_verdict_compares_with_prompting(steered: float, few: float, rating: str) -> None:
    found = verdict("soft_injection", metrics(steered, 0.0, few, dev_size=400))
    assert found is not None and found.rating == rating
    assert f"{100 * steered:.0f} %" in found.summary and "10-shot prompting" in found.summary
    # below: what to try; as good: a tie is still within chance (±7 points on 400); better by 20 points: nothing
    assert (found.advice is not None) == (rating != "better_than_few_shot")
    assert found.margin is not None and (steered == few or found.margin < abs(steered - few))


@pytest.mark.parametrize(("steered", "few"), [(0.8, 0.6), (0.5, 0.7)])
def test_verdict_says_when_few_held_out_items_cannot_settle_the_gap(steered: float, few: float) -> None:
    few_items = verdict("soft_injection", metrics(steered, 0.0, few, dev_size=10))
    many_items = verdict("soft_injection", metrics(steered, 0.0, few, dev_size=400))
    assert few_items is not None and many_items is not None
    assert few_items.rating == many_items.rating  # the rating still compares the figures measured
    assert few_items.advice is not None and "within chance" in few_items.advice
    assert many_items.advice is None or "within chance" not in many_items.advice
    assert few_items.margin is not None and many_items.margin is not None and few_items.margin > many_items.margin


def test_verdict_on_training_demonstrations_has_no_margin() -> None:
    found = verdict("task_vector", {**metrics(0.9, 0.0, 0.5), "held_out": False, "dev_size": 3})
    assert found is not None and found.margin is None and "within chance" not in (found.advice or "")


@given(
    steered=st.floats(0, 1),
    few=st.floats(0, 1),
    n=st.integers(1, 10_000),
)
def test_chance_margin_is_a_width_that_shrinks_with_more_items(steered: float, few: float, n: int) -> None:
    margin = chance_margin(steered, few, n)
    assert 0 < margin <= 1
    assert chance_margin(steered, few, 4 * n) < margin


def test_verdict_names_what_auto_tried_when_even_the_best_is_weak() -> None:
    tried = [{"method": "task_vector", "dev_exact": 0.2}, {"method": "soft_injection", "dev_exact": 0.4}]
    found = verdict("soft_injection", metrics(0.4, 0.0, 0.7, auto={"chose": "soft_injection", "candidates": tried}))
    assert found is not None and found.rating == "below_few_shot"
    assert "auto chose soft_injection" in found.summary
    assert "task_vector 20 %" in found.advice and "soft_injection 40 %" in found.advice


def test_verdict_says_when_auto_kept_context_tuning_below_a_candidate_that_beat_prompting() -> None:
    tried = [{"method": "soft_injection", "dev_exact": 0.5}, {"method": "context_tuning", "dev_exact": 0.3}]
    found = verdict("context_tuning", metrics(0.3, 0.0, 0.4, auto={"chose": "context_tuning", "candidates": tried}))
    assert found is not None and found.rating == "below_few_shot"
    assert "Even the best" not in found.advice
    assert "soft_injection scored above it" in found.advice and "by less than chance" in found.advice


def test_verdict_on_a_style_method_that_changes_nothing() -> None:
    tried = [{"method": "icv", "dev_exact": 0.0}, {"method": "soft_injection", "dev_exact": 0.8}]
    found = verdict("icv", metrics(0.0, 0.0, 0.7, auto={"candidates": tried}))
    assert found is not None and found.rating == "no_effect"
    assert "icv did not change answers" in found.advice and "soft_injection reached 80 %" in found.advice


def test_nothing_right_anywhere_is_no_effect_not_a_tie() -> None:
    found = verdict("soft_injection", metrics(0.0, 0.0, 0.0))
    assert found is not None and found.rating == "no_effect" and found.advice


def test_verdict_warns_when_nothing_was_held_out() -> None:
    found = verdict("task_vector", {**metrics(0.9, 0.0, 0.5), "held_out": False, "dev_size": 3})
    assert found is not None and found.held_out == 0 and "post at least" in found.advice


def test_no_verdict_without_a_comparison() -> None:
    assert verdict("task_vector", {}) is None
    first_token_only = verdict(
        "task_vector", {"dev_steered_accuracy": 0.5, "dev_zero_shot_accuracy": 0.0, "dev_few_shot_accuracy": 0.5}
    )
    assert first_token_only is not None and first_token_only.metric == "first_token"
