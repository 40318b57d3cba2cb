"""scripts/compose_eval.py on a tiny model: every condition scored on both tasks' items, the table drawn."""

from __future__ import annotations

from scripts.compose_eval import conditions, measure_pair, table
from steering.model.loading import LoadedModel
from steering.steer.prefix_compose import LAYOUTS


def test_a_pair_is_scored_alone_and_composed_in_each_layout_and_order(tiny_llama: LoadedModel) -> None:
    result = measure_pair(tiny_llama, list(LAYOUTS), ("antonyms", "uppercase"), 3)
    assert result["tasks"] == ["antonyms", "uppercase"] and min(result["prefix_tokens"]) > 0
    for scores in result["scores"].values():
        assert list(scores) == conditions(list(LAYOUTS))
        assert all(len(s["answers"]) == 3 and 0.0 <= s["exact"] <= 1.0 for s in scores.values())
        # Side by side, the entries' order does not change a composed prefix's answers.
        assert scores["parallel: A, B"]["answers"] == scores["parallel: B, A"]["answers"]
    lines = table([result], list(LAYOUTS)).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| antonyms + uppercase | antonyms |")
