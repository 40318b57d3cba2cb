"""The KV-prefix tables of the vLLM engine (`kv_prefix.py`) and the room the front end keeps for them
(`slots.py`), without vLLM: one flattened forward of prefill chunks and decode tokens.

Invariants: a placeholder token (a steered request's position below its prefix's length) takes that column's
key and its value times the strength; every other token's key and value come out bitwise as they went in, and
after `end` every token does; an unloaded prefix's entries are empty and go to the next prefix; the slots never
hold more than their room, never evict a pinned vector, and a refused reservation changes nothing.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steering.generation.vllm.kv_prefix import PrefixTables, PrefixWriter
from steering.generation.vllm.slots import VectorSlots
from steering.generation.vllm.token_steering import StepRow
from steering.vectors.task_vector import TaskVector

LAYERS, KV_HEADS, HEAD_DIM = 3, 2, 4
WIDTH = KV_HEADS * HEAD_DIM


def prefix(tokens: int, seed: int) -> TaskVector:
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        n: torch.randn(LAYERS, KV_HEADS, tokens, HEAD_DIM, generator=gen) for n in ("prefix_keys", "prefix_values")
    }
    return TaskVector("context_tuning", "kv_prefix", tensors, list(range(LAYERS)), 1.0, "test")  # type: ignore[arg-type]


def writer(capacity: int = 20) -> PrefixWriter:
    tables = PrefixTables(
        num_layers=LAYERS,
        kv_width=WIDTH,
        capacity=capacity,
        max_tokens=64,
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    return PrefixWriter(tables)


def column(vector: TaskVector, name: str, layer: int, position: int) -> torch.Tensor:
    return vector.tensors[name][layer, :, position].flatten()


def test_placeholders_take_their_columns_and_other_tokens_stay() -> None:
    long, short = prefix(9, 1), prefix(4, 2)
    prefixes = writer()
    prefixes.load("long", long)
    prefixes.load("short", short)
    # A chunk crossing the end of the long prefix (positions 6-11), a decode token past the short one (position
    # 20), the short prefix's first chunk (positions 0-2); flat tokens 0-1 and 13 belong to plain requests.
    rows = [
        ("long", 1.0, StepRow(2, 6, 6, 15)),
        ("short", 0.5, StepRow(8, 1, 20, 10)),
        ("short", 0.5, StepRow(10, 3, 0, 8)),
    ]
    assert prefixes.begin(rows)
    tokens = 14
    taken = {2: (long, 6, 1.0), 3: (long, 7, 1.0), 4: (long, 8, 1.0), 10: (short, 0, 0.5), 11: (short, 1, 0.5)}
    taken[12] = (short, 2, 0.5)
    kept = [t for t in range(tokens) if t not in taken]
    key, value = torch.randn(tokens, WIDTH), torch.randn(tokens, WIDTH)
    for layer in range(LAYERS):
        got_key, got_value = prefixes.tables.replace(layer, key, value)
        assert torch.equal(got_key[kept], key[kept]) and torch.equal(got_value[kept], value[kept])
        for flat, (vector, position, strength) in taken.items():
            assert torch.equal(got_key[flat], column(vector, "prefix_keys", layer, position))
            assert torch.equal(got_value[flat], column(vector, "prefix_values", layer, position) * strength)
    prefixes.end()
    got_key, got_value = prefixes.tables.replace(1, key, value)
    assert torch.equal(got_key, key) and torch.equal(got_value, value)


def test_keys_shaped_by_heads_are_replaced_alike() -> None:
    """Some models hand the attention layer [tokens, kv_heads, head_dim]: the same rows change, the shape stays."""
    prefixes = writer()
    vector = prefix(3, 6)
    prefixes.load("p", vector)
    prefixes.begin([("p", 2.0, StepRow(1, 2, 1, 5))])
    key, value = torch.randn(4, KV_HEADS, HEAD_DIM), torch.randn(4, KV_HEADS, HEAD_DIM)
    flat = prefixes.tables.replace(0, key.flatten(1), value.flatten(1))
    shaped = prefixes.tables.replace(0, key, value)
    assert shaped[0].shape == key.shape and torch.equal(shaped[0].flatten(1), flat[0])
    assert torch.equal(shaped[1].flatten(1), flat[1])
    assert torch.equal(shaped[1][2], vector.tensors["prefix_values"][0, :, 2] * 2.0)


def test_a_forward_without_placeholders_says_so() -> None:
    prefixes = writer()
    prefixes.load("p", prefix(5, 3))
    assert not prefixes.begin([("p", 1.0, StepRow(0, 4, 5, 9))])  # every position past the prefix
    assert not prefixes.tables.active
    assert not prefixes.begin([])


def test_unloaded_entries_are_emptied_and_reused() -> None:
    prefixes = writer(capacity=12)
    prefixes.load("a", prefix(8, 4))
    with pytest.raises(RuntimeError, match="4 more columns"):
        prefixes.load("b", prefix(6, 5))
    prefixes.unload(["a"])
    assert not prefixes.tables.keys.any() and not prefixes.tables.values.any()
    b = prefix(12, 5)
    prefixes.load("b", b)
    assert prefixes.begin([("b", 1.0, StepRow(0, 12, 0, 20))])
    key = prefixes.tables.replace(2, torch.zeros(12, WIDTH), torch.zeros(12, WIDTH))[0]
    assert torch.equal(key, b.tensors["prefix_keys"][2].permute(1, 0, 2).flatten(1))
    with pytest.raises(RuntimeError, match="not loaded"):
        prefixes.begin([("a", 1.0, StepRow(0, 1, 0, 3))])


def test_the_slots_keep_prefixes_by_columns_beside_the_vectors() -> None:
    slots = VectorSlots(2, columns=100)
    assert slots.reserve(["v1", "p1"], {"p1": (0, 60)}) is not None
    assert slots.reserve(["v2"]) is not None  # a prefix takes no slot
    assert slots.reserve(["p2"], {"p2": (0, 50)}) is None  # p1 is pinned: 110 columns do not fit
    slots.release(["v1", "p1"])
    reservation = slots.reserve(["p2"], {"p2": (0, 50)})
    assert reservation is not None and reservation.evict == ("p1",)  # not v1: it frees no column
    with pytest.raises(ValueError, match="101 KV-prefix columns"):
        slots.reserve(["p3"], {"p3": (0, 101)})


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(0, 7), min_size=1, max_size=3, unique=True),
            st.booleans(),  # release this request's ids at once
        ),
        max_size=25,
    )
)
def test_the_slots_never_overflow_nor_evict_a_pinned_vector(requests) -> None:
    """Ids 0-3 are vectors (a slot each), 4-7 prefixes of 20-50 columns."""
    slots = VectorSlots(3, columns=90)
    costs = {f"p{i}": (0, 20 + 10 * (i - 4)) for i in range(4, 8)}
    pinned: dict[str, int] = {}
    for ids, release in requests:
        names = [f"p{i}" if i >= 4 else f"v{i}" for i in ids]
        before = (dict(slots._held), slots.used())
        try:
            reservation = slots.reserve(names, costs)
        except ValueError:
            continue
        if reservation is None:
            assert (dict(slots._held), slots.used()) == before
            continue
        assert not set(reservation.evict) & {n for n, users in pinned.items() if users}
        used = slots.used()
        assert used[0] <= 3 and used[1] <= 90 and all(n in slots for n in names)
        for n in reservation.evict:
            pinned.pop(n, None)
        for n in names:
            pinned[n] = pinned.get(n, 0) + 1
        if release:
            slots.release(names)
            for n in names:
                pinned[n] -= 1
