"""The verdict's advice whenever its held-out demonstrations cannot tell steering from prompting."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from steering.tasks.verdict import verdict


def held_out_metrics(steered: int, zero: int, few: int, n: int) -> dict[str, object]:
    """Metrics of a vector scored on `n` held-out demonstrations, each figure a count of right answers."""
    return {
        "dev_steered_exact": steered / n,
        "dev_zero_shot_exact": zero / n,
        "dev_few_shot_exact": few / n,
        "dev_few_shot_k": 10,
        "dev_size": n,
        "held_out": True,
    }


@st.composite
def scores(draw: st.DrawFn) -> tuple[int, int, int, int]:
    n = draw(st.integers(2, 400))
    return draw(st.integers(0, n)), draw(st.integers(0, n)), draw(st.integers(0, n)), n


@given(scores())
def test_a_gap_inside_the_margin_is_always_said(counts: tuple[int, int, int, int]) -> None:
    """Better, as good or below: when the gap to prompting is inside the margin, the advice says it is chance."""
    steered, zero, few, n = counts
    found = verdict("task_vector", held_out_metrics(steered, zero, few, n))
    assert found is not None and found.margin is not None
    if abs(found.steered - found.few_shot) >= found.margin or (found.rating == "no_effect" and steered >= few):
        return
    assert found.advice is not None and "within chance" in found.advice
    assert f"±{100 * found.margin:.0f} points" in found.advice and "post more demonstrations" in found.advice


@given(scores())
def test_trailing_prompting_is_always_said(counts: tuple[int, int, int, int]) -> None:
    """Whatever the rating, a vector that answers fewer held-out demonstrations than prompting says so: also when
    it adds nothing to asking zero-shot (`no_effect`), where prompting's lead is the news."""
    steered, zero, few, n = counts
    found = verdict("task_vector", held_out_metrics(steered, zero, few, n))
    assert found is not None
    if few > steered:
        assert "below 10-shot prompting" in found.summary
    else:
        assert "below" not in found.summary


def test_no_effect_while_prompting_answers_says_prompting_is_better() -> None:
    found = verdict("context_tuning", {**held_out_metrics(0, 0, 2, 10), "auto": {"chose": "context_tuning"}})
    assert found is not None and found.rating == "no_effect"
    assert found.summary.endswith("no better than asking with no demonstrations, and below 10-shot prompting.")
    assert found.advice == (
        "The vector did not change answers on held-out demonstrations. Try a higher strength or more demonstrations. "
        "10-shot prompting answers 20 % of them: prompting answers this task better. On 10 held-out demonstrations "
        "a gap of 20 points to 10-shot prompting (0 % against 20 %) is within chance (95 % margin ±29 points); post "
        "more demonstrations for a firmer verdict."
    )


def test_a_tie_on_few_items_says_how_large_a_gap_it_hides() -> None:
    found = verdict("task_vector", held_out_metrics(7, 0, 7, 10))
    assert found is not None and found.rating == "as_good_as_few_shot"
    assert found.margin is not None and round(100 * found.margin) == 38  # the README's example
    assert found.advice == (
        "On 10 held-out demonstrations steering and 10-shot prompting both answer 70 %, but a true gap of up to "
        "38 points either way is within chance here (95 % margin ±38 points), so the tie is not firm; post more "
        "demonstrations for a firmer verdict."
    )
