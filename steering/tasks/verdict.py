"""A task's verdict: how its vector did on held-out demonstrations against prompting, in words and numbers.

Every method records, on the demonstrations it held out, zero-shot, few-shot and steered accuracy
(exact match where measured, else first-token). The verdict reads those metrics, so it can be given
for any stored vector, and says plainly when steering is weaker than prompting and what to try, and
when the held-out demonstrations are too few to tell a gap from chance.
"""

from __future__ import annotations

import math
from typing import Any

from steering.wire.protocol import Verdict, VerdictRating

STYLE_METHODS = {"icv", "contrastive"}
MIN_HELD_OUT = 8  # demonstrations to post so that some are held out (see `common.split_demonstrations`)
Z_95 = 1.959964
MAX_DEV_SIZE = 10**9  # past it a stored count is not one (and would overflow the margin's float arithmetic)


def chance_margin(steered: float, few: float, n: int) -> float:
    """Half-width of the 95 % interval of the gap between two rates, each measured on `n` items.

    The Agresti-Caffo interval (Agresti & Caffo, The American Statistician 54(4), 2000): one success
    and one failure are added to each rate, so that even 10/10 against 10/10 keeps a width. It treats
    the two rates as independent; both are measured on the same items, so the true interval is
    usually narrower and this errs on the side of calling a gap chance.
    """
    if n <= 0:
        return 1.0
    ps, pf = (steered * n + 1) / (n + 2), (few * n + 1) / (n + 2)
    return Z_95 * math.sqrt((ps * (1 - ps) + pf * (1 - pf)) / (n + 2))


def _pct(value: float) -> str:
    return f"{100 * value:.0f} %"


def _figures(metrics: dict[str, Any]) -> tuple[str, float, float, float] | None:
    for metric, suffix in (("exact", "exact"), ("first_token", "accuracy")):
        values = [metrics.get(f"dev_{c}_{suffix}") for c in ("steered", "zero_shot", "few_shot")]
        if all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in values):  # fractions, whatever was stored
            return metric, float(values[0]), float(values[1]), float(values[2])
    return None


def _rating(steered: float, zero: float, few: float) -> VerdictRating:
    if steered <= zero:  # whatever prompting does, the vector adds nothing to asking plainly
        return "no_effect"
    if steered > few + 1e-9:
        return "better_than_few_shot"
    if steered >= few - 1e-9:
        return "as_good_as_few_shot"
    return "below_few_shot"


def _auto(metrics: dict[str, Any]) -> dict[str, Any]:
    """`auto`'s report; an imported file's metrics are any JSON within their bound, so anything else is none."""
    report = metrics.get("auto")
    return report if isinstance(report, dict) else {}


def _tried(metrics: dict[str, Any], metric: str) -> list[tuple[str, float]]:
    """`auto`'s candidates and their held-out scores, in the metric of the verdict."""
    key = "dev_exact" if metric == "exact" else "dev_accuracy"
    candidates = _auto(metrics).get("candidates")
    return [
        (c["method"], float(c[key]))
        for c in (candidates if isinstance(candidates, list) else [])
        if isinstance(c, dict) and isinstance(c.get("method"), str) and isinstance(c.get(key), (int, float))
    ]


def _advice(
    method: str, rating: VerdictRating, metrics: dict[str, Any], metric: str, shots: str, steered: float, few: float
) -> str | None:
    tried = _tried(metrics, metric)
    listing = ", ".join(f"{m} {_pct(v)}" for m, v in tried)
    parts: list[str] = []
    if rating == "no_effect":
        if method in STYLE_METHODS:
            best = max(tried, key=lambda t: t[1], default=None)
            reached = f"; {best[0]} reached {_pct(best[1])}" if best and best[0] != method else ""
            parts.append(
                f"{method} did not change answers on this task: it steers style and tone, not mappings{reached}. "
                "For input-to-output tasks use soft_injection or auto."
            )
        else:
            instead = " or more demonstrations" if _auto(metrics) else ", more demonstrations, or method auto"
            parts.append(
                f"The vector did not change answers on held-out demonstrations. Try a higher strength{instead}."
            )
        if few > steered:
            parts.append(f"{shots} prompting answers {_pct(few)} of them: prompting answers this task better.")
    elif rating == "below_few_shot":
        ahead = [m for m, v in tried if v > few + 1e-9]
        if ahead:  # `auto.choose` kept context tuning within chance of a candidate that scored above prompting
            parts.append(
                f"{method} trails {shots} prompting here, and {', '.join(ahead)} scored above it on these few "
                f"held-out demonstrations ({listing}), by less than chance over {method}, which auto keeps as the "
                "best on tasks nobody tuned on. Post more demonstrations for a firmer choice, or name a method."
            )
        elif tried:
            parts.append(
                f"Even the best method tried trails {shots} prompting here ({listing}). Prompting with "
                "demonstrations answers this task better; more demonstrations may help the vector."
            )
        else:
            parts.append(
                f"{method} trails {shots} prompting here. Try method auto, which compares the vector methods on "
                "the same held-out demonstrations, or post more demonstrations."
            )
    if metrics.get("held_out") is False:
        parts.append(
            "There were too few demonstrations to hold any out, so these figures come from the training "
            f"demonstrations themselves and flatter the vector; post at least {MIN_HELD_OUT}."
        )
    return " ".join(parts) or None


def _chance_note(
    rating: VerdictRating, steered: float, few: float, margin: float | None, held_out: int, shots: str
) -> str | None:
    """Said whenever the gap to prompting is inside the margin: a tie included, since a tie settles nothing either."""
    gap = abs(steered - few)
    if margin is None or gap >= margin or (rating == "no_effect" and steered >= few):
        return None
    firmer = "post more demonstrations for a firmer verdict."
    if rating == "as_good_as_few_shot":
        return (
            f"On {held_out} held-out demonstrations steering and {shots} prompting both answer {_pct(steered)}, "
            f"but a true gap of up to {100 * margin:.0f} points either way is within chance here (95 % margin "
            f"±{100 * margin:.0f} points), so the tie is not firm; {firmer}"
        )
    return (
        f"On {held_out} held-out demonstrations a gap of {100 * gap:.0f} points to {shots} prompting "
        f"({_pct(steered)} against {_pct(few)}) is within chance (95 % margin ±{100 * margin:.0f} points); {firmer}"
    )


def verdict(method: str, metrics: dict[str, Any] | None) -> Verdict | None:
    """The verdict on a vector from its metrics; None when it recorded no held-out comparison (e.g. GGUF files)."""
    metrics = metrics if isinstance(metrics, dict) else {}  # a stored record may hold anything here
    figures = _figures(metrics)
    if figures is None:
        return None
    metric, steered, zero, few = figures
    rating = _rating(steered, zero, few)
    k = metrics.get("dev_few_shot_k")
    shots = f"{k}-shot" if isinstance(k, int) else "few-shot"
    size = metrics.get("dev_size")
    size = size if isinstance(size, int) and 0 <= size <= MAX_DEV_SIZE else 0
    held_out = size if metrics.get("held_out") else 0
    margin = chance_margin(steered, few, held_out) if held_out else None
    where = f"{size} held-out demonstrations" if held_out else f"{size} training demonstrations"
    chose = _auto(metrics).get("chose")
    chose = chose if isinstance(chose, str) else None
    who = f"auto chose {chose}, which" if chose else method
    measure = "exactly" if metric == "exact" else "on the first token"
    conclusion = {
        "better_than_few_shot": f"better than {shots} prompting",
        "as_good_as_few_shot": f"as good as {shots} prompting",
        "below_few_shot": f"below {shots} prompting",
        "no_effect": "no better than asking with no demonstrations",
    }[rating]
    if rating == "no_effect" and few > steered:
        conclusion += f", and below {shots} prompting"
    summary = (
        f"{who} answers {_pct(steered)} of {where} {measure}; {shots} prompting {_pct(few)}, "
        f"zero-shot {_pct(zero)}: {conclusion}."
    )
    advice = _advice(chose or method, rating, metrics, metric, shots, steered, few)
    chance = _chance_note(rating, steered, few, margin, held_out, shots)
    return Verdict(
        rating=rating,
        summary=summary,
        advice=" ".join(filter(None, [advice, chance])) or None,
        metric=metric,
        steered=steered,
        zero_shot=zero,
        few_shot=few,
        few_shot_k=k if isinstance(k, int) else None,
        held_out=held_out,
        margin=margin,
    )
