"""`auto.choose`: the best candidate by held-out scores, unless context tuning is within chance of it; and when
context tuning's score settles the choice before the others run."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from steering.methods.auto import PREFERRED, choose, rank_key, run_order, settled
from steering.tasks.verdict import chance_margin


def scores(exact: float, accuracy: float = 0.5, logprob: float = -1.0, held_out: int = 10) -> dict[str, Any]:
    return {
        "dev_steered_exact": exact,
        "dev_steered_accuracy": accuracy,
        "dev_steered_logprob": logprob,
        "dev_size": held_out,
    }


def test_context_tuning_is_kept_when_another_leads_it_within_chance() -> None:
    chosen, reason = choose({"soft_injection": scores(0.1), PREFERRED: scores(0.0), "task_vector": scores(0.0)})
    assert chosen == PREFERRED
    assert "within chance" in reason and "soft_injection" in reason


def test_a_lead_beyond_chance_wins() -> None:
    chosen, reason = choose({"soft_injection": scores(0.9), PREFERRED: scores(0.2)})
    assert chosen == "soft_injection"
    assert "more than chance" in reason


def test_more_held_out_answers_narrow_the_margin() -> None:
    few = {"function_vector": scores(0.6, held_out=10), PREFERRED: scores(0.5, held_out=10)}
    many = {"function_vector": scores(0.6, held_out=2000), PREFERRED: scores(0.5, held_out=2000)}
    assert choose(few)[0] == PREFERRED
    assert choose(many)[0] == "function_vector"


def test_without_context_tuning_or_its_scores_the_best_by_rank_is_kept() -> None:
    assert choose({"task_vector": scores(0.3), "soft_injection": scores(0.4)})[0] == "soft_injection"
    no_exact = {"soft_injection": scores(0.4), PREFERRED: {"dev_steered_accuracy": 0.9}}
    assert choose(no_exact)[0] == "soft_injection"
    tie = {"task_vector": scores(0.4, accuracy=0.6), "function_vector": scores(0.4, accuracy=0.6)}
    assert choose(tie)[0] == "task_vector"  # the first of equals, in the candidates' order


@given(
    st.dictionaries(
        st.sampled_from(["task_vector", "function_vector", "soft_injection", PREFERRED]),
        st.tuples(st.integers(0, 10), st.floats(0, 1), st.floats(-20, 0)),
        min_size=1,
    )
)
def test_the_choice_is_the_best_or_context_tuning_within_chance(draws: dict[str, tuple[int, float, float]]) -> None:
    metrics = {m: scores(right / 10, accuracy, logprob) for m, (right, accuracy, logprob) in draws.items()}
    chosen, _ = choose(metrics)
    best = max(metrics, key=lambda m: rank_key(metrics[m]))
    if chosen != best:
        assert chosen == PREFERRED
        lead = metrics[best]["dev_steered_exact"] - metrics[PREFERRED]["dev_steered_exact"]
        assert lead <= chance_margin(metrics[best]["dev_steered_exact"], metrics[PREFERRED]["dev_steered_exact"], 10)


@given(
    st.integers(1, 400).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))),
    st.lists(
        st.tuples(
            st.sampled_from(["task_vector", "function_vector", "soft_injection"]),
            st.floats(0, 1),
            st.floats(0, 1),
            st.floats(-20, 0),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_a_settled_choice_is_context_tuning_whatever_the_others_score(
    preferred: tuple[int, int], others: list[tuple[str, float, float, float]]
) -> None:
    """`settled` lets `auto` skip the other candidates only where no score of theirs, any fraction, could change
    `choose`'s answer; where it does not, a candidate that answers every held-out demonstration would."""
    right, held_out = preferred
    ours = scores(right / held_out, held_out=held_out)
    theirs = {m: scores(exact, accuracy, logprob, held_out) for m, exact, accuracy, logprob in others}
    if settled(ours) is not None:
        assert choose({**theirs, PREFERRED: ours})[0] == PREFERRED
        # ... as the margin rule would have it: no other score leads by more than chance.
        mine = right / held_out
        assert all(exact - mine <= chance_margin(exact, mine, held_out) for _, exact, _, _ in others)
        assert "no candidate can beat it" in str(settled(ours))
    else:
        assert choose({"soft_injection": scores(1.0, held_out=held_out), PREFERRED: ours})[0] == "soft_injection"


def test_context_tuning_settles_at_seven_of_ten_held_out() -> None:
    assert settled(scores(0.6)) is None and settled(scores(0.7)) is not None  # the README's figures
    assert settled({"dev_steered_accuracy": 1.0}) is None  # no exact score: nothing is settled


def test_context_tuning_runs_first_and_the_rest_keep_their_order() -> None:
    assert run_order(["task_vector", "soft_injection", PREFERRED]) == [PREFERRED, "task_vector", "soft_injection"]
    assert run_order(["function_vector", "task_vector"]) == ["function_vector", "task_vector"]


def test_without_held_out_demonstrations_context_tuning_is_kept_and_settles_the_choice() -> None:
    """The others' scores are then on the demonstrations they were fitted to; the prefix's are leave-one-out."""
    unheld = {**scores(0.25, held_out=4), "held_out": False}
    chosen, reason = choose({"soft_injection": {**scores(1.0, held_out=4), "held_out": False}, PREFERRED: unheld})
    assert chosen == PREFERRED and "no demonstrations were held out" in reason
    assert settled(unheld) == reason
    held = {**scores(0.25, held_out=4), "held_out": True}
    assert choose({"soft_injection": scores(1.0, held_out=4), PREFERRED: held})[0] == "soft_injection"
