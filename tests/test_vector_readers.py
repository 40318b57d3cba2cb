"""Strict readers of vector files against hostile input: GGUF control vectors and safetensors steering vectors.

Fuzzing starts from real files (written by `export_gguf` and `TaskVector.to_bytes` from small hand-made vectors)
and damages them: flipped bytes, truncation, huge values spliced over count fields, inserted and deleted bytes,
and (safetensors) header and metadata fields replaced by values of the wrong type. Whatever comes in, a reader
returns a valid vector or raises `VectorImportError`, each call within `CALL_LIMIT_S` and `PEAK_LIMIT_BYTES`
of traced (Python and numpy) memory. Then explicit regressions, and the import route through the ASGI app:
hostile files answer 422 fast while /healthz answers, and imports beyond the limit answer 429.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import struct
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import torch
from fastapi import FastAPI
from gguf import GGUFWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

import app.vector_files as vectors_route
from steering.vectors.errors import ModelMismatch, VectorImportError
from steering.vectors.export import directions_to_vector, export_gguf, read_gguf_directions
from steering.vectors.gguf_reader import MAX_NESTING, parse_gguf
from steering.vectors.safetensors_reader import json_depth
from steering.vectors.task_vector import TaskVector, check_for_model
from steering.wire.protocol import TaskInfo, Template
from tests.api_helpers import OCTET, assert_error, running_app, services_of
from tests.api_helpers import settings as app_settings

CALL_LIMIT_S = 1.0
PEAK_LIMIT_BYTES = 16 << 20
# Examples per fuzz test; seconds in all at the default. Hunt longer with STEER_FUZZ_READERS_EXAMPLES=20000.
FUZZ_EXAMPLES = int(os.environ.get("STEER_FUZZ_READERS_EXAMPLES", "400"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,  # the time bound per call is asserted in `bounded`, not per example
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
HUGE = st.sampled_from([2**63 - 1, 2**64 - 1, 2**62, 2**32, 2**31 - 1, 65_536]) | st.integers(0, 2**64 - 1)


@dataclass(frozen=True)
class Dims:
    num_layers: int = 3
    hidden_size: int = 16
    num_heads: int = 2
    head_dim: int = 8
    num_kv_heads: int = 1


DIMS = Dims()


def residual_vector(strength: float = 1.5) -> TaskVector:
    gen = torch.Generator().manual_seed(1)
    return TaskVector(
        method="contrastive",
        mode="add_all",
        tensors={"residual": torch.randn(DIMS.num_layers, DIMS.hidden_size, generator=gen)},
        layers=[1, 2],
        default_strength=strength,
        fingerprint="tiny:test@0",
        template=Template(),
        num_demonstrations=4,
        compute_seconds=0.5,
        options={"k": 3, "nested": {"a": [1, 2.5, None]}},
        metrics={"acc": 0.5},
    )


def head_vector() -> TaskVector:
    gen = torch.Generator().manual_seed(2)
    shape = (DIMS.num_layers, DIMS.num_heads)
    return TaskVector(
        method="soft_injection",
        mode="head_mix_last",
        tensors={
            "head_means": torch.randn(*shape, DIMS.head_dim, generator=gen).to(torch.bfloat16),
            "gate_logits": torch.randn(*shape, generator=gen),
        },
        layers=[0, 1],
        default_strength=1.0,
        fingerprint="tiny:test@0",
    )


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("gguf") / "v.gguf"
    export_gguf(residual_vector(), path, "llama")
    return path.read_bytes()


@pytest.fixture(scope="module", params=["residual", "head_mix"])
def st_file(request: pytest.FixtureRequest) -> bytes:
    return (residual_vector() if request.param == "residual" else head_vector()).to_bytes()


def bounded(read: Callable[[bytes], Any], data: bytes) -> Any | None:
    """`read(data)`, or None when it raises `VectorImportError`; any other exception fails the test."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = read(data)
    except VectorImportError:
        result = None
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < CALL_LIMIT_S, f"{elapsed:.2f} s for {len(data)} bytes"
    assert peak < PEAK_LIMIT_BYTES, f"{peak} bytes traced for {len(data)} bytes"
    return result


def read_gguf(data: bytes) -> TaskVector:
    hint, directions = read_gguf_directions(data)
    assert hint is None or isinstance(hint, str)
    for direction in directions.values():
        assert direction.dtype == np.float32 and direction.ndim == 1 and np.isfinite(direction).all()
    return directions_to_vector(hint, directions, "fp", DIMS.num_layers, DIMS.hidden_size)


def read_safetensors(data: bytes) -> TaskVector:
    vector = TaskVector.from_bytes(data)
    check_for_model(vector, DIMS)
    return vector


def assert_usable(vector: TaskVector) -> None:
    """What the service does with an imported vector works: it is finite, re-serialises, and lists as JSON."""
    assert all(bool(torch.isfinite(t).all()) for t in vector.tensors.values())
    assert math.isfinite(vector.default_strength)
    assert TaskVector.from_bytes(vector.to_bytes()).metadata() == vector.metadata()
    info = TaskInfo(
        id="task-x",
        status="ready",
        method=vector.method,
        layers=vector.layers,
        default_strength=vector.default_strength,
        template=vector.template,
        options=vector.options,
        metrics=vector.metrics,
    )
    json.dumps(info.model_dump(mode="json"), allow_nan=False)


@st.composite
def damaged(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "truncate", "count", "insert", "delete"]))
        if kind == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "count":
            data[at : at + 8] = struct.pack("<Q", draw(HUGE))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


# ---------------------------------------------------------------------------------------------- GGUF fuzz


def test_real_gguf_reads(gguf_file: bytes) -> None:
    vector = bounded(read_gguf, gguf_file)
    assert vector is not None and vector.layers == [1, 2]
    expected = residual_vector().tensors["residual"][1:] * 1.5
    assert torch.equal(vector.tensors["residual"][1:], expected)


@FUZZ
@given(data=st.data())
def test_gguf_fuzz_damaged_real_file(gguf_file: bytes, data: st.DataObject) -> None:
    vector = bounded(read_gguf, data.draw(damaged(gguf_file)))
    if vector is not None:
        assert_usable(vector)


def test_gguf_huge_value_at_every_header_offset(gguf_file: bytes) -> None:
    """Every count and length field (and everything else in the header) overwritten with huge values."""
    header_end = parse_gguf(gguf_file).data_start
    for at in range(header_end):
        for value in (2**63 - 1, 2**64 - 1, 2**32 + 1, len(gguf_file)):
            data = bytearray(gguf_file)
            data[at : at + 8] = struct.pack("<Q", value)
            vector = bounded(read_gguf, bytes(data))
            if vector is not None:
                assert_usable(vector)


# --------------------------------------------------------------------------------------- safetensors fuzz

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
PLAUSIBLE = {
    "dtype": st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "f32", ""]),
    "shape": st.lists(st.integers(-2, 2**40) | st.sampled_from([0, 1, 3, 16, 2**63]), max_size=9),
    "data_offsets": st.lists(st.integers(-8, 2**64) | st.sampled_from([0, 96, 192, 2**63]), max_size=3),
    "layers": st.lists(st.integers(-3, 2**40) | st.booleans(), max_size=4),
    "mode": st.sampled_from(["add_all", "head_mix_last", "replace_last", "ADD_ALL", "nope"]),
    "method": st.sampled_from(["icv", "auto", "soft_injection", "bench", ""]),
    "template": st.fixed_dictionaries({"example": st.text(max_size=12), "query": st.text(max_size=12)}),
    "format_version": st.sampled_from([1, 1.0, "1", True, 2, None]),
}


def split_file(data: bytes) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return header, json.loads(header["__metadata__"]["steering"]), data[8 + size :]


def join_file(header: dict[str, Any], tensors: bytes) -> bytes:
    text = json.dumps(header).encode()  # NaN and Infinity on purpose: json.loads reads them back
    return len(text).to_bytes(8, "little") + text + tensors


@st.composite
def rewritten(draw: st.DrawFn, original: bytes) -> bytes:
    """The real file with one header or metadata field changed (or removed), lengths kept consistent."""
    header, meta, tensors = split_file(original)
    where = draw(st.sampled_from(["metadata", "tensor", "header"]))
    if where == "metadata":
        key = draw(st.sampled_from([*sorted(meta), "extra"]))
        if draw(st.booleans()) and key in meta:
            del meta[key]
        else:
            meta[key] = draw(PLAUSIBLE.get(key, JSON_VALUES) | JSON_VALUES)
        header["__metadata__"]["steering"] = json.dumps(meta)
    elif where == "tensor":
        name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
        header[name][field] = draw(PLAUSIBLE.get(field, JSON_VALUES) | JSON_VALUES)
    else:
        key = draw(st.sampled_from(["__metadata__", "residual", "head_scores", "gate_logits", "other"]))
        header[key] = draw(JSON_VALUES)
    return join_file(header, tensors)


def test_real_safetensors_reads(st_file: bytes) -> None:
    vector = bounded(read_safetensors, st_file)
    assert vector is not None
    assert vector.to_bytes() == st_file
    assert_usable(vector)


@FUZZ
@given(data=st.data())
def test_safetensors_fuzz_damaged_real_file(st_file: bytes, data: st.DataObject) -> None:
    vector = bounded(read_safetensors, data.draw(damaged(st_file)))
    if vector is not None:
        assert_usable(vector)


@FUZZ
@given(data=st.data())
def test_safetensors_fuzz_rewritten_header(st_file: bytes, data: st.DataObject) -> None:
    vector = bounded(read_safetensors, data.draw(rewritten(st_file)))
    if vector is not None:
        assert_usable(vector)


# ------------------------------------------------------------------------------------ GGUF regressions


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def gstr(text: str) -> bytes:
    raw = text.encode()
    return u64(len(raw)) + raw


def kv_str(key: str, value: str) -> bytes:
    return gstr(key) + u32(8) + gstr(value)


def tensor_info(name: str, dims: tuple[int, ...], offset: int, ggml_type: int = 0) -> bytes:
    return gstr(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(ggml_type) + u64(offset)


def control_vector(
    infos: list[bytes], data: bytes, kvs: tuple[bytes, ...] = (), version: int = 3, arch: str = "controlvector"
) -> bytes:
    """A GGUF control vector assembled byte by byte, for layouts no writer produces."""
    all_kvs = [kv_str("general.architecture", arch), *kvs]
    head = b"GGUF" + u32(version) + u64(len(infos)) + u64(len(all_kvs)) + b"".join(all_kvs) + b"".join(infos)
    return head + b"\0" * (-len(head) % 32) + data


ROW = np.arange(DIMS.hidden_size, dtype="<f4").tobytes()


def test_the_68_byte_gguf_with_an_endless_array_is_refused_at_once() -> None:
    data = b"GGUF" + u32(3) + u64(0) + u64(1) + gstr("k") + u32(9) + u32(0) + u64(2**63 - 1)
    data += b"\0" * (68 - len(data))
    assert len(data) == 68
    with pytest.raises(VectorImportError, match="truncated"):
        read_gguf_directions(data)
    assert bounded(read_gguf, data) is None


def test_hand_assembled_control_vector_reads() -> None:
    data = control_vector([tensor_info("direction.1", (16,), 0), tensor_info("direction.0", (16,), 64)], ROW * 2)
    vector = bounded(read_gguf, data)
    assert vector is not None and vector.layers == [0, 1]


@pytest.mark.parametrize(
    ("infos", "data", "message"),
    [
        ([tensor_info("direction.1", (16,), 0), tensor_info("direction.1", (16,), 64)], ROW * 2, "repeated"),
        ([tensor_info("direction.1", (16,), 0), tensor_info("direction.01", (16,), 64)], ROW * 2, "unexpected"),
        ([tensor_info("direction.1", (16,), 0), tensor_info("direction.2", (16,), 32)], ROW * 2, "overlap"),
        ([tensor_info("direction.1", (16,), 4)], ROW + b"\0" * 32, "misaligned"),
        ([tensor_info("direction.1", (16,), 0)], ROW[:-4], "past the end"),
        ([tensor_info("direction.1", (4, 4), 0)], ROW, "1-D"),
        ([tensor_info("direction.1", (16,), 0, ggml_type=1)], ROW, "F16"),
        ([tensor_info("direction.1", (16,), 0, ggml_type=999)], ROW, "unknown ggml type"),
        ([tensor_info("direction.1", (16, 1, 1, 1, 1), 0)], ROW, "dimensions"),
        ([tensor_info("direction.²", (16,), 0)], ROW, "unexpected"),
        ([tensor_info("direction.1", (16,), 0)], np.full(16, np.nan, "<f4").tobytes(), "NaN"),
        ([tensor_info("direction.1", (16,), 0)], np.full(16, np.inf, "<f4").tobytes(), "NaN or infinite"),
        ([], b"", "no direction tensors"),
    ],
)
def test_malformed_control_vectors_are_refused(infos: list[bytes], data: bytes, message: str) -> None:
    with pytest.raises(VectorImportError, match=message):
        read_gguf_directions(control_vector(infos, data))


def test_gguf_header_refusals() -> None:
    one = [tensor_info("direction.1", (16,), 0)]
    with pytest.raises(VectorImportError, match="version"):
        read_gguf_directions(control_vector(one, ROW, version=1))
    with pytest.raises(VectorImportError, match="version"):  # a big-endian file reads as version 3 << 24
        read_gguf_directions(control_vector(one, ROW, version=3 << 24))
    with pytest.raises(VectorImportError, match="repeated"):
        read_gguf_directions(control_vector(one, ROW, kvs=(kv_str("general.architecture", "controlvector"),)))
    with pytest.raises(VectorImportError, match="alignment"):
        read_gguf_directions(control_vector(one, ROW, kvs=(gstr("general.alignment") + u32(4) + u32(48),)))
    with pytest.raises(VectorImportError, match="architecture 'llama'"):
        read_gguf_directions(control_vector(one, ROW, arch="llama"))


def test_gguf_nesting_is_capped() -> None:
    def nested(depth: int) -> bytes:
        value = u32(0) + u64(0)  # an empty UINT8 array
        for _ in range(depth - 1):
            value = u32(9) + u64(1) + value
        return gstr("deep") + u32(9) + value

    one = [tensor_info("direction.1", (16,), 0)]
    assert read_gguf_directions(control_vector(one, ROW, kvs=(nested(MAX_NESTING),)))[1].keys() == {1}
    with pytest.raises(VectorImportError, match="nests"):
        read_gguf_directions(control_vector(one, ROW, kvs=(nested(MAX_NESTING + 1),)))


def test_every_gguf_value_type_and_repeng_layout_read(tmp_path: Path) -> None:
    """The GGUF writer's own output with every value type, a custom alignment and repeng's direction.0."""
    path = tmp_path / "all.gguf"
    writer = GGUFWriter(path, "controlvector")
    writer.add_custom_alignment(64)
    writer.add_string("controlvector.model_hint", "mistral")
    writer.add_uint32("controlvector.layer_count", 2)
    for add, value in [("uint8", 7), ("int8", -7), ("uint16", 700), ("int16", -700), ("int32", -70_000)]:
        getattr(writer, f"add_{add}")(f"x.{add}", value)
    writer.add_uint64("x.u64", 2**40)
    writer.add_int64("x.i64", -(2**40))
    writer.add_float32("x.f32", 1.5)
    writer.add_float64("x.f64", 2.25)
    writer.add_bool("x.bool", True)
    writer.add_array("x.strings", ["a", "héllo"])
    writer.add_array("x.nested", [[1, 2], ["a", "b"]])
    writer.add_tensor("direction.0", np.ones(16, np.float32))
    writer.add_tensor("direction.2", np.arange(16, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    contents = parse_gguf(path.read_bytes())
    assert contents.fields["x.int8"] == -7 and contents.fields["x.bool"] is True
    assert contents.fields["x.strings"] == ["a", "héllo"] and contents.fields["x.nested"][1] == ["a", "b"]
    assert contents.data_start % 64 == 0
    hint, directions = read_gguf_directions(path)
    assert hint == "mistral" and sorted(directions) == [0, 2]
    assert np.array_equal(directions[2], np.arange(16, dtype=np.float32))


def test_gguf_for_another_model_is_a_model_mismatch(gguf_file: bytes) -> None:
    hint, directions = read_gguf_directions(gguf_file)
    with pytest.raises(ModelMismatch, match="hidden size"):
        directions_to_vector(hint, directions, "fp", DIMS.num_layers, DIMS.hidden_size + 1)
    with pytest.raises(ModelMismatch, match="out of range"):
        directions_to_vector(hint, directions, "fp", 2, DIMS.hidden_size)


# ----------------------------------------------------------------------------- safetensors regressions


def with_metadata(data: bytes, **changes: Any) -> bytes:
    header, meta, tensors = split_file(data)
    header["__metadata__"]["steering"] = json.dumps({**meta, **changes})
    return join_file(header, tensors)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"options": "x"}, "options"),
        ({"metrics": []}, "metrics"),
        ({"options": {"a": float("nan")}}, "options"),
        ({"default_strength": float("inf")}, "default_strength"),
        ({"default_strength": "1.0"}, "default_strength"),
        ({"layers": [1, -1]}, "layers"),
        ({"layers": [True]}, "layers"),
        ({"layers": []}, "layers"),
        ({"mode": "sideways"}, "mode"),
        ({"method": "auto"}, "method"),
        ({"template": {"example": "no placeholders"}}, "template"),
        ({"num_demonstrations": -1}, "num_demonstrations"),
        ({"compute_seconds": -0.5}, "compute_seconds"),
        ({"format_version": 2}, "unsupported metadata"),
    ],
)
def test_bad_metadata_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(VectorImportError, match=message):
        TaskVector.from_bytes(with_metadata(residual_vector().to_bytes(), **changes))


def test_deeply_nested_json_is_refused_before_parsing() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert json_depth(deep) == 100_000 and json_depth('{"a": "[[[[", "b": [1]}') == 2
    raw = deep.encode()
    nested = len(raw).to_bytes(8, "little") + raw
    with pytest.raises(VectorImportError, match="nests"):
        TaskVector.from_bytes(nested)
    assert bounded(TaskVector.from_bytes, nested) is None
    header, meta, tensors = split_file(residual_vector().to_bytes())
    header["__metadata__"]["steering"] = json.dumps(meta)[:-1] + ', "options": ' + "{" * 5000 + "}" * 5000 + "}"
    with pytest.raises(VectorImportError, match="nests"):
        TaskVector.from_bytes(join_file(header, tensors))


@pytest.mark.parametrize("size", [2**64 - 1, 2**63, 10_000_000, 1_000])
def test_header_length_past_the_data_is_refused(size: int) -> None:
    data = size.to_bytes(8, "little") + residual_vector().to_bytes()[8:]
    with pytest.raises(VectorImportError, match="header length"):
        TaskVector.from_bytes(data)
    assert bounded(TaskVector.from_bytes, data) is None


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_tensors_are_refused(value: float) -> None:
    vector = residual_vector()
    vector.tensors["residual"][2, 3] = value
    with pytest.raises(VectorImportError, match="NaN or infinite"):
        TaskVector.from_bytes(vector.to_bytes())


def test_tensor_layout_must_be_exact() -> None:
    header, _, tensors = split_file(residual_vector().to_bytes())
    header["residual"]["data_offsets"] = [0, len(tensors) - 4]
    with pytest.raises(VectorImportError, match="data_offsets"):
        TaskVector.from_bytes(join_file(header, tensors))
    gap = st_save({"residual": torch.zeros(3, 16)}, metadata={"steering": json.dumps(residual_vector().metadata())})
    with pytest.raises(VectorImportError, match="data section"):
        TaskVector.from_bytes(gap + b"\0" * 8)
    foreign = st_save({"residual": torch.zeros(3, 16), "weight": torch.zeros(2)}, metadata=None)
    with pytest.raises(VectorImportError, match="steering"):
        TaskVector.from_bytes(foreign)


def test_unknown_or_missing_tensors_are_refused() -> None:
    meta = {"steering": json.dumps(residual_vector().metadata())}
    with pytest.raises(VectorImportError, match="tensors"):
        TaskVector.from_bytes(st_save({"residual": torch.zeros(3, 16), "payload": torch.zeros(4)}, metadata=meta))
    with pytest.raises(VectorImportError, match="tensors"):
        TaskVector.from_bytes(st_save({"head_means": torch.zeros(3, 2, 8)}, metadata=meta))


def test_check_for_model() -> None:
    check_for_model(residual_vector(), DIMS)
    check_for_model(head_vector(), DIMS)
    with pytest.raises(ModelMismatch, match="shape"):
        check_for_model(residual_vector(), Dims(hidden_size=32))
    beyond = residual_vector()
    beyond.layers = [1, DIMS.num_layers]
    with pytest.raises(ModelMismatch, match="out of range"):
        check_for_model(beyond, DIMS)
    twice = residual_vector()
    twice.layers = [1, 1]
    with pytest.raises(VectorImportError, match="repeat"):
        check_for_model(twice, DIMS)


def test_large_valid_vectors_read_fast() -> None:
    vector = residual_vector()
    vector.tensors["residual"] = torch.randn(32, 4096)
    data = vector.to_bytes()
    start = time.perf_counter()
    back = TaskVector.from_bytes(data)
    assert time.perf_counter() - start < 0.5
    assert torch.equal(back.tensors["residual"], vector.tensors["residual"])


# ------------------------------------------------------------------------------------------------ HTTP

HOSTILE_GGUF = (b"GGUF" + u32(3) + u64(0) + u64(1) + gstr("k") + u32(9) + u32(0) + u64(2**63 - 1)).ljust(68, b"\0")


@pytest_asyncio.fixture(scope="module")
async def api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[FastAPI, Any]]:
    config = app_settings(tmp_path_factory.mktemp("imports"), max_concurrent_imports=1)
    async with running_app(config) as (app, client):
        yield app, client


def server_vector(app: FastAPI, **changes: Any) -> TaskVector:
    lm = services_of(app).lm
    vector = TaskVector(
        method="contrastive",
        mode="add_all",
        tensors={"residual": torch.randn(lm.arch.num_layers, lm.arch.hidden_size)},
        layers=[1],
        default_strength=1.0,
        fingerprint=lm.fingerprint,
    )
    for key, value in changes.items():
        setattr(vector, key, value)
    return vector


async def test_hostile_gguf_answers_422_fast_while_healthz_answers(api: tuple[FastAPI, Any]) -> None:
    _, client = api
    start = time.perf_counter()
    imported, health = await asyncio.gather(
        client.post("/v1/tasks/import", content=HOSTILE_GGUF, headers=OCTET), client.get("/healthz")
    )
    assert time.perf_counter() - start < 2.0
    assert_error(imported, 422, "invalid_vector")
    assert health.status_code == 200
    assert (await client.get("/healthz")).status_code == 200


async def test_hostile_safetensors_answer_422(api: tuple[FastAPI, Any]) -> None:
    app, client = api
    good = server_vector(app).to_bytes()
    for body in (with_metadata(good, options="x"), with_metadata(good, metrics=[]), b"\x08" + b"\0" * 7 + b"[" * 8):
        assert_error(await client.post("/v1/tasks/import", content=body, headers=OCTET), 422, "invalid_vector")
    nan = server_vector(app)
    nan.tensors["residual"][0, 0] = float("nan")
    assert_error(await client.post("/v1/tasks/import", content=nan.to_bytes(), headers=OCTET), 422, "invalid_vector")
    strong = server_vector(app, default_strength=1e6).to_bytes()
    assert_error(await client.post("/v1/tasks/import", content=strong, headers=OCTET), 422, "strength_out_of_range")
    imported = await client.post("/v1/tasks/import", content=good, headers=OCTET)
    assert imported.status_code == 201, imported.text
    listed = await client.get("/v1/tasks")
    assert listed.status_code == 200 and imported.json()["id"] in [t["id"] for t in listed.json()["tasks"]]


async def test_imports_beyond_the_limit_answer_429_and_slow_reads_time_out(
    api: tuple[FastAPI, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client = api
    release = threading.Event()
    real_read = vectors_route.read_vector

    def held_read(*args: Any) -> Any:
        release.wait(10)
        return real_read(*args)

    monkeypatch.setattr(vectors_route, "read_vector", held_read)
    monkeypatch.setattr(vectors_route, "IMPORT_TIMEOUT_S", 0.3)
    body = server_vector(app).to_bytes()
    first = asyncio.create_task(client.post("/v1/tasks/import", content=body, headers=OCTET))
    try:
        for _ in range(200):
            if getattr(app.state, "import_slots", None) is not None and app.state.import_slots.busy == 1:
                break
            await asyncio.sleep(0.01)
        second = await client.post("/v1/tasks/import", content=body, headers=OCTET)
        assert_error(second, 429, "too_many_imports")
        assert second.headers["retry-after"] == "1"
        assert (await client.get("/healthz")).status_code == 200
        timed_out = await first
        assert_error(timed_out, 503, "import_timeout")
        assert app.state.import_slots.busy == 1  # the reading thread still runs: its slot stays taken
    finally:
        release.set()
    for _ in range(200):
        if app.state.import_slots.busy == 0:
            break
        await asyncio.sleep(0.01)
    assert app.state.import_slots.busy == 0


async def test_import_body_is_in_the_openapi_schema(api: tuple[FastAPI, Any]) -> None:
    _, client = api
    operation = (await client.get("/openapi.json")).json()["paths"]["/v1/tasks/import"]["post"]
    content = operation["requestBody"]["content"]
    assert content["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
