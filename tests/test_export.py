"""GGUF control vectors and safetensors files: round trips, the written format, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFWriter
from safetensors.torch import save_file

from steering.methods import compute_vector
from steering.model.loading import LoadedModel, load_model
from steering.vectors.export import (
    GGUF_METHODS,
    ExportError,
    VectorImportError,
    export_gguf,
    export_safetensors,
    import_gguf,
    import_safetensors,
)
from steering.vectors.modes import GGUF_EXPORTABLE_MODES, expected_shapes, mode_spec
from steering.vectors.task_vector import TaskVector
from steering.wire.method_names import METHOD_NAMES
from steering.wire.protocol import Demonstration, Template

RESIDUAL_MODES = ("add_all", "add_from_last", "add_all_norm", "add_last")


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model("tiny:llama")


def residual_vector(
    tiny: LoadedModel,
    mode: str = "add_all",
    layers: list[int] | None = None,
    strength: float = 1.0,
    dtype: torch.dtype = torch.float32,
    method: str = "icv",
) -> TaskVector:
    gen = torch.Generator().manual_seed(7)
    residual = torch.randn(tiny.arch.num_layers, tiny.arch.hidden_size, generator=gen).to(dtype)
    return TaskVector(
        method=method,
        mode=mode,
        tensors={"residual": residual},  # type: ignore[arg-type]
        layers=list(range(1, tiny.arch.num_layers)) if layers is None else layers,
        default_strength=strength,
        fingerprint=tiny.fingerprint,
        template=Template(example="In: {input}\nOut: {output}", query="In: {input}\nOut:"),
        num_demonstrations=5,
        compute_seconds=0.25,
        options={"k": 3},
        metrics={"acc": 0.5},
    )


HEAD_MODES = ("head_mix_last", "head_mix_answer")


def head_vector(tiny: LoadedModel, mode: str = "head_mix_last") -> TaskVector:
    gen = torch.Generator().manual_seed(3)
    shapes = expected_shapes(tiny.arch)
    return TaskVector(
        method="soft_injection",
        mode=mode,  # type: ignore[arg-type]
        tensors={name: torch.randn(shapes[name], generator=gen) for name in mode_spec(mode).tensors},
        layers=[0, 1],
        default_strength=1.0,
        fingerprint=tiny.fingerprint,
    )


def hint(tiny: LoadedModel) -> str:
    return str(tiny.model.config.model_type)


def write_raw_gguf(path: Path, tensors: dict[str, np.ndarray], arch: str = "controlvector") -> None:
    writer = GGUFWriter(path, arch)
    writer.add_string(f"{arch}.model_hint", "llama")
    writer.add_uint32(f"{arch}.layer_count", len(tensors))
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---------------------------------------------------------------------------------------------- GGUF


@pytest.mark.parametrize("mode", RESIDUAL_MODES)
def test_gguf_round_trip(tiny: LoadedModel, tmp_path: Path, mode: str) -> None:
    vector = residual_vector(tiny, mode=mode, layers=[1])
    path = tmp_path / "v.gguf"
    export_gguf(vector, path, hint(tiny))
    back = import_gguf(
        path, tiny.fingerprint, tiny.arch.num_layers, tiny.arch.hidden_size, expected_model_hint=hint(tiny)
    )
    assert back.method == "contrastive" and back.mode == "add_all"
    assert back.layers == [1]
    assert back.default_strength == 1.0
    assert back.fingerprint == tiny.fingerprint
    assert back.options == {"imported_from": "gguf", "model_hint": "llama"}
    assert back.tensors["residual"].dtype == torch.float32
    assert back.tensors["residual"].shape == (tiny.arch.num_layers, tiny.arch.hidden_size)
    assert torch.equal(back.tensors["residual"][1], vector.tensors["residual"][1])
    assert torch.equal(back.tensors["residual"][0], torch.zeros(tiny.arch.hidden_size))  # absent layer


def test_gguf_bakes_in_default_strength(tiny: LoadedModel, tmp_path: Path) -> None:
    vector = residual_vector(tiny, layers=[1], strength=2.5, dtype=torch.bfloat16)
    path = tmp_path / "v.gguf"
    export_gguf(vector, path, "llama")
    back = import_gguf(path, tiny.fingerprint, tiny.arch.num_layers, tiny.arch.hidden_size)
    expected = vector.tensors["residual"][1].float() * 2.5
    assert torch.equal(back.tensors["residual"][1], expected)
    assert back.default_strength == 1.0


def test_gguf_file_format(tiny: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "v.gguf"
    export_gguf(residual_vector(tiny, layers=[1]), path, hint(tiny))
    reader = GGUFReader(path)
    arch_field = reader.get_field("general.architecture")
    hint_field = reader.get_field("controlvector.model_hint")
    count_field = reader.get_field("controlvector.layer_count")
    assert arch_field is not None and arch_field.contents() == "controlvector"
    assert hint_field is not None and hint_field.contents() == "llama"
    assert count_field is not None and count_field.contents() == 1
    assert [t.name for t in reader.tensors] == ["direction.1"]
    tensor = reader.tensors[0]
    assert tensor.tensor_type.name == "F32"
    assert [int(n) for n in tensor.shape] == [tiny.arch.hidden_size]
    assert np.array_equal(np.asarray(tensor.data), residual_vector(tiny).tensors["residual"][1].numpy())


def test_gguf_layer_zero_is_refused_or_dropped(tiny: LoadedModel, tmp_path: Path) -> None:
    vector = residual_vector(tiny, layers=[0, 1])
    with pytest.raises(ExportError, match="layer 0"):
        export_gguf(vector, tmp_path / "a.gguf", "llama")
    export_gguf(vector, tmp_path / "b.gguf", "llama", drop_layer_zero=True)
    assert [t.name for t in GGUFReader(tmp_path / "b.gguf").tensors] == ["direction.1"]


@pytest.mark.parametrize("mode", ["replace_last", *HEAD_MODES])
def test_gguf_refuses_non_additive_modes(tiny: LoadedModel, tmp_path: Path, mode: str) -> None:
    vector = head_vector(tiny, mode) if mode in HEAD_MODES else residual_vector(tiny, mode, method="task_vector")
    path = tmp_path / "v.gguf"
    with pytest.raises(ExportError, match="safetensors only"):
        export_gguf(vector, path, "llama")
    assert not path.exists()


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("replace_last", "no additive form"), ("head_mix_last", "per-head gates"), ("head_mix_answer", "per-head gates")],
)
def test_gguf_refusal_says_why_and_which_vectors_export(
    tiny: LoadedModel, tmp_path: Path, mode: str, reason: str
) -> None:
    vector = head_vector(tiny, mode) if mode in HEAD_MODES else residual_vector(tiny, mode, method="task_vector")
    with pytest.raises(ExportError) as refused:
        export_gguf(vector, tmp_path / "v.gguf", "llama")
    message = str(refused.value)
    assert f"{vector.method} vector (mode {mode})" in message and reason in message
    for exportable in (*GGUF_EXPORTABLE_MODES, *GGUF_METHODS):
        assert exportable in message


ANTONYMS = [
    Demonstration(input=a, output=b)
    for a, b in [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("day", "night"), ("in", "out")]
]
FAST = {"num_prompts": 4, "k_shot": 2}
METHOD_OPTIONS = {
    "task_vector": FAST,
    "function_vector": {**FAST, "num_corrupted": 2},
    "soft_injection": {**FAST, "steps": 2, "eval_every": 1, "batch_size": 4},
    "context_tuning": {"k_shot": 2, "epochs": 1},
    "icv": FAST,
    "contrastive": FAST,
}


def test_gguf_methods_are_the_methods_whose_vectors_export(tiny: LoadedModel) -> None:
    """`GGUF_METHODS`, which the refusal and the README name, against the modes each method really produces."""
    assert set(METHOD_OPTIONS) == set(METHOD_NAMES) - {"auto"}
    runs = list(METHOD_OPTIONS.items())
    runs.append(("function_vector", {**METHOD_OPTIONS["function_vector"], "positions": "from_last"}))
    for method, options in runs:
        vector = compute_vector(tiny, ANTONYMS, method, options=options)
        assert mode_spec(vector.mode).gguf == (method in GGUF_METHODS), (method, vector.mode)


def test_gguf_wrong_hidden_size_is_refused(tiny: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "v.gguf"
    write_raw_gguf(path, {"direction.1": np.ones(tiny.arch.hidden_size + 8, dtype=np.float32)})
    with pytest.raises(VectorImportError, match="hidden size"):
        import_gguf(path, tiny.fingerprint, tiny.arch.num_layers, tiny.arch.hidden_size)


def test_gguf_layer_out_of_range_is_refused(tiny: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "v.gguf"
    write_raw_gguf(path, {f"direction.{tiny.arch.num_layers}": np.ones(tiny.arch.hidden_size, np.float32)})
    with pytest.raises(VectorImportError, match="out of range"):
        import_gguf(path, tiny.fingerprint, tiny.arch.num_layers, tiny.arch.hidden_size)


def test_gguf_repeng_layer_zero_is_accepted(tiny: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "v.gguf"
    row = np.arange(tiny.arch.hidden_size, dtype=np.float32)
    write_raw_gguf(path, {"direction.0": row})
    back = import_gguf(path, tiny.fingerprint, tiny.arch.num_layers, tiny.arch.hidden_size)
    assert back.layers == [0]
    assert torch.equal(back.tensors["residual"][0], torch.from_numpy(row))


def test_gguf_other_architecture_is_refused(tiny: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    write_raw_gguf(path, {"direction.1": np.ones(tiny.arch.hidden_size, np.float32)}, arch="llama")
    with pytest.raises(VectorImportError, match="not a control vector"):
        import_gguf(path, tiny.fingerprint, tiny.arch.num_layers, tiny.arch.hidden_size)


def test_gguf_stray_tensor_is_refused(tiny: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "v.gguf"
    write_raw_gguf(path, {"token_embd.weight": np.ones(tiny.arch.hidden_size, np.float32)})
    with pytest.raises(VectorImportError, match="direction"):
        import_gguf(path, tiny.fingerprint, tiny.arch.num_layers, tiny.arch.hidden_size)


def test_gguf_not_a_gguf_is_refused(tiny: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "v.gguf"
    path.write_bytes(b"definitely not gguf" * 10)
    with pytest.raises(VectorImportError, match="GGUF"):
        import_gguf(path, tiny.fingerprint, tiny.arch.num_layers, tiny.arch.hidden_size)


def test_gguf_model_hint_mismatch_is_refused(tiny: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "v.gguf"
    export_gguf(residual_vector(tiny, layers=[1]), path, "qwen2")
    with pytest.raises(VectorImportError, match="qwen2"):
        import_gguf(path, tiny.fingerprint, tiny.arch.num_layers, tiny.arch.hidden_size, expected_model_hint=hint(tiny))
    back = import_gguf(path, tiny.fingerprint, tiny.arch.num_layers, tiny.arch.hidden_size)  # unchecked
    assert back.options["model_hint"] == "qwen2"


# --------------------------------------------------------------------------------------- safetensors


def assert_same_vector(a: TaskVector, b: TaskVector) -> None:
    assert a.tensors.keys() == b.tensors.keys()
    for name in a.tensors:
        assert a.tensors[name].dtype == b.tensors[name].dtype
        assert torch.equal(a.tensors[name], b.tensors[name])
    assert a.metadata() == b.metadata()


@pytest.mark.parametrize("mode", [*RESIDUAL_MODES, "replace_last", *HEAD_MODES])
def test_safetensors_round_trip_is_bit_identical(tiny: LoadedModel, tmp_path: Path, mode: str) -> None:
    vector = (
        head_vector(tiny, mode)
        if mode in HEAD_MODES
        else residual_vector(tiny, mode, layers=[0, 1], strength=3.0, dtype=torch.bfloat16)
    )
    path = tmp_path / "v.safetensors"
    export_safetensors(vector, path)
    back = import_safetensors(path)
    assert_same_vector(vector, back)
    assert path.read_bytes() == vector.to_bytes()


def test_safetensors_foreign_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({"weight": torch.randn(4, 4)}, str(path), metadata={"format": "pt"})
    with pytest.raises(VectorImportError, match="not a steering vector"):
        import_safetensors(path)


NOT_SAFETENSORS = [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00[1, 2, 3]       ", b"garbage" * 50]


@pytest.mark.parametrize("content", NOT_SAFETENSORS)
def test_safetensors_garbage_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(VectorImportError, match="not a steering vector"):
        import_safetensors(path)
