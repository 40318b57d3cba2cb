"""Vectors that travel: GGUF control vectors for llama.cpp / repeng, and plain safetensors files.

GGUF control vectors (`llama-cli --control-vector`, repeng's `ControlVector.export_gguf`) are one
float32 tensor `direction.<k>` per layer, plus `general.architecture = "controlvector"`,
`controlvector.model_hint` (the model family, e.g. "llama") and `controlvector.layer_count` (the number
of direction tensors). llama.cpp ignores the metadata; only the tensors matter.

Layer numbering, as read in llama.cpp and repeng:

- llama.cpp: `common_control_vector_load_one` (common/common.cpp) parses `k` from `direction.<k>`,
  rejects `k == 0` ("invalid (zero) direction tensor layer index") and stores the row at
  `data[(k - 1) * n_embd]`; `llama_adapter_cvec::apply` (src/llama-adapter.cpp) copies that row into
  `tensors[k]` ("there's never a tensor for layer 0"), and each model graph (e.g. src/models/llama.cpp)
  calls `build_cvec(cur, il)` right after block `il`'s final residual add, `il` counting from 0.
- repeng: `direction.<layer>` where `layer` indexes `model.model.layers` (0-based), and `ControlModule`
  adds it to that block's output.

So `direction.k` is added to the OUTPUT of decoder layer k counted from 0, exactly where our `residual`
row k is added: rows map to tensor names one to one, with no shift. llama.cpp cannot steer the output
of layer 0 (it refuses the whole file if `direction.0` is present), so exporting row 0 is refused
unless `drop_layer_zero=True`; repeng can, so importing `direction.0` is accepted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter

from steering.vectors.errors import ModelMismatch, VectorImportError
from steering.vectors.gguf_reader import parse_gguf
from steering.vectors.modes import GGUF_EXPORTABLE_MODES, InjectionModeSpec, mode_spec
from steering.vectors.task_vector import TaskVector, check_layers
from steering.wire.protocol import Template

GGUF_ARCH = "controlvector"
KEY_ARCH = "general.architecture"
KEY_MODEL_HINT = f"{GGUF_ARCH}.model_hint"
KEY_LAYER_COUNT = f"{GGUF_ARCH}.layer_count"
TENSOR_PREFIX = "direction."

PathLike = str | os.PathLike[str]
GGUFSource = bytes | bytearray | memoryview | PathLike
_DIRECTION = re.compile(r"direction\.(0|[1-9][0-9]{0,5})")


# The methods whose vectors export to GGUF: every mode they produce has `gguf` set in `steering.vectors.modes` (a test
# computes each method and holds this to the modes it produces). `auto` exports as the method it chose.
GGUF_METHODS: tuple[str, ...] = ("function_vector", "icv", "contrastive")


class ExportError(ValueError):
    """A vector that cannot be written in the requested format."""


# --------------------------------------------------------------------------------------------- GGUF


def _why_not_additive(spec: InjectionModeSpec) -> str:
    if spec.op == "replace":
        return (
            f"{spec.name} replaces the residual state at the last prompt token, h <- (1 - s)·h + s·v: the change "
            "it makes, s·(v - h), depends on each prompt's own state h, so it has no additive form that a fixed "
            "row can hold"
        )
    if spec.site == "heads":
        return (
            f"{spec.name} mixes attention heads' outputs with learned per-head gates inside the attention block, "
            "which no row added to the residual stream reproduces"
        )
    return f"{spec.name} is not one row added to the residual stream per layer"


def gguf_refusal(vector: TaskVector) -> str:
    """Why `vector` cannot be a GGUF control vector, and which vectors can."""
    spec = mode_spec(vector.mode)
    return (
        f"a {vector.method} vector (mode {spec.name}) cannot be exported as a GGUF control vector: a control "
        f"vector is one row per layer that llama.cpp adds to the residual stream at every position, and "
        f"{_why_not_additive(spec)}. GGUF takes the additive residual modes ({', '.join(GGUF_EXPORTABLE_MODES)}), "
        f"which {', '.join(GGUF_METHODS[:-1])} and {GGUF_METHODS[-1]} compute; this vector exports as "
        "safetensors only, which the service and the library import back"
    )


def gguf_rows(vector: TaskVector, *, drop_layer_zero: bool = False) -> dict[int, torch.Tensor]:
    """The float32 rows a GGUF export writes: `{layer: residual[layer] * default_strength}`."""
    if not mode_spec(vector.mode).gguf:  # one residual row added per layer: the only shape of a control vector
        raise ExportError(gguf_refusal(vector))
    layers = sorted(set(vector.layers))
    if 0 in layers:
        if not drop_layer_zero:
            raise ExportError(
                "the vector steers the output of decoder layer 0, which llama.cpp control vectors cannot "
                "reach (it rejects direction.0); pass drop_layer_zero=True to export the other layers"
            )
        layers.remove(0)
    if not layers:
        raise ExportError("the vector has no layers to export")
    residual = vector.tensors["residual"].detach().to("cpu", torch.float32)
    return {layer: (residual[layer] * float(vector.default_strength)).contiguous() for layer in layers}


def export_gguf(vector: TaskVector, path: PathLike, model_hint: str, *, drop_layer_zero: bool = False) -> None:
    """Write `vector` as a GGUF control vector readable by llama.cpp's `--control-vector` and repeng.

    Row `k` of `residual` (added to the output of decoder layer k, 0-based) becomes tensor
    `direction.k`: llama.cpp and repeng use the same numbering (see the module docstring). Only the rows
    in `vector.layers` are written, each multiplied by `vector.default_strength`: llama.cpp applies a
    tensor as-is, scaled only by its own `--control-vector-scaled FILE SCALE` factor, so a scale of 1
    reproduces this vector at its default strength.

    Only residual additive modes export. llama.cpp adds a direction at every position, prompt
    included, so the position rules of `add_from_last` and `add_last` (from / at the last prompt token)
    are lost: the exported file is an every-position (`add_all`) vector. `add_all_norm` loses its norm
    rescaling. `replace_last` and the head-mix modes raise `ExportError` (safetensors only).

    `model_hint` is the model family (`model.config.model_type`, e.g. "llama").
    """
    if not model_hint:
        raise ExportError("model_hint (the model family, e.g. 'llama') must not be empty")
    rows = gguf_rows(vector, drop_layer_zero=drop_layer_zero)
    writer = GGUFWriter(Path(path), GGUF_ARCH)
    try:
        writer.add_string(KEY_MODEL_HINT, model_hint)
        writer.add_uint32(KEY_LAYER_COUNT, len(rows))
        for layer, row in rows.items():
            writer.add_tensor(f"{TENSOR_PREFIX}{layer}", row.numpy().astype(np.float32, copy=False))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _string_field(fields: dict[str, Any], key: str) -> str | None:
    value = fields.get(key)
    if value is not None and not isinstance(value, str):
        raise VectorImportError(f"GGUF field {key} should be a string, got {type(value).__name__}")
    return value


def _layer_index(name: str) -> int:
    match = _DIRECTION.fullmatch(name)
    if match is None:
        raise VectorImportError(f"unexpected tensor {name!r} in a control vector (want direction.<layer>)")
    return int(match.group(1))


def _read_source(source: GGUFSource) -> tuple[bytes | bytearray | memoryview, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return source, "the file"
    try:
        return Path(source).read_bytes(), str(source)
    except OSError as exc:
        raise VectorImportError(f"cannot read {source}: {exc}") from exc


def read_gguf_directions(source: GGUFSource) -> tuple[str | None, dict[int, np.ndarray]]:
    """The model hint and `{layer: float32 direction}` of a GGUF control vector (bytes or a path).

    Read with the strict reader (`steering.vectors.gguf_reader`): a malformed or hostile file raises
    `VectorImportError` quickly, whatever its header declares. Only what a control vector holds is
    accepted: architecture `controlvector` and 1-D F32 tensors `direction.<layer>` of finite values.
    Layer numbers are written plainly (`direction.01` is refused) and tensor names are unique, so each
    layer appears once: llama.cpp would sum two spellings of one layer, we refuse the file instead.
    """
    data, name = _read_source(source)
    try:
        contents = parse_gguf(data)
    except VectorImportError as exc:
        raise VectorImportError(f"{name} is not a readable GGUF file: {exc}") from None
    arch = _string_field(contents.fields, KEY_ARCH)
    if arch != GGUF_ARCH:
        raise VectorImportError(f"{name} is not a control vector (architecture {arch!r}, want {GGUF_ARCH!r})")
    directions: dict[int, np.ndarray] = {}
    for tensor in contents.tensors:
        layer = _layer_index(tensor.name)
        if tensor.type != GGMLQuantizationType.F32:
            raise VectorImportError(f"{tensor.name} is {tensor.type.name}, control vectors are F32")
        if len(tensor.shape) != 1:
            raise VectorImportError(f"{tensor.name} has shape {list(tensor.shape)}, want a 1-D vector")
        data_f32 = np.frombuffer(contents.tensor_bytes(tensor), dtype="<f4").astype(np.float32)
        if not np.isfinite(data_f32).all():
            raise VectorImportError(f"{tensor.name} holds NaN or infinite values")
        directions[layer] = data_f32
    if not directions:
        raise VectorImportError(f"{name} holds no direction tensors")
    return _string_field(contents.fields, KEY_MODEL_HINT), directions


def directions_to_vector(
    model_hint: str | None,
    directions: dict[int, np.ndarray],
    fingerprint: str,
    num_layers: int,
    hidden_size: int,
    template: Template | None = None,
) -> TaskVector:
    """Directions read from a GGUF as a `contrastive`, `add_all` TaskVector for a model of this size.

    Layers and row sizes are checked against the model before anything is allocated (`ModelMismatch`).
    """
    check_layers(sorted(directions), num_layers)
    for layer, data in sorted(directions.items()):
        if data.size != hidden_size:
            raise ModelMismatch(
                f"direction.{layer} has {data.size} values, but the model's hidden size is {hidden_size}"
            )
    residual = torch.zeros(num_layers, hidden_size, dtype=torch.float32)
    for layer, data in directions.items():
        residual[layer] = torch.from_numpy(data)
    options: dict[str, Any] = {"imported_from": "gguf", "model_hint": model_hint}
    return TaskVector(
        method="contrastive",
        mode="add_all",
        tensors={"residual": residual},
        layers=sorted(directions),
        default_strength=1.0,
        fingerprint=fingerprint,
        template=template if template is not None else Template(),
        options=options,
    )


def import_gguf(
    source: GGUFSource,
    fingerprint: str,
    num_layers: int,
    hidden_size: int,
    template: Template | None = None,
    *,
    expected_model_hint: str | None = None,
) -> TaskVector:
    """Read a GGUF control vector (llama.cpp / repeng; bytes or a path) as a `contrastive`, `add_all` TaskVector.

    `direction.k` becomes `residual` row k (the output of decoder layer k, 0-based; see the module
    docstring), absent layers are zero rows, `layers` are the present ones and the default strength is
    1.0. A GGUF carries no model fingerprint: `fingerprint` is the one of the model the caller will use
    it with, and is trusted. The only model check a GGUF allows is the family: pass
    `expected_model_hint` (e.g. `model.config.model_type`) to refuse a file whose
    `controlvector.model_hint` differs (or is missing). Shapes must equal `hidden_size` and layers must
    lie in `[0, num_layers)` (else `ModelMismatch`); anything else malformed raises `VectorImportError`.
    """
    model_hint, directions = read_gguf_directions(source)
    if expected_model_hint is not None and (model_hint or "").lower() != expected_model_hint.lower():
        raise ModelMismatch(f"a control vector for model family {model_hint!r}, not {expected_model_hint!r}")
    return directions_to_vector(model_hint, directions, fingerprint, num_layers, hidden_size, template)


# --------------------------------------------------------------------------------------- safetensors


def export_safetensors(vector: TaskVector, path: PathLike) -> None:
    """Write `vector` as a `.safetensors` file (any method or mode; tensors and metadata, no pickle)."""
    Path(path).write_bytes(vector.to_bytes())


def import_safetensors(path: PathLike) -> TaskVector:
    """Read a vector written by `export_safetensors`; any other file raises `VectorImportError`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise VectorImportError(f"cannot read {path}: {exc}") from exc
    try:
        return TaskVector.from_bytes(data)
    except VectorImportError as exc:
        raise VectorImportError(f"{path} is not a steering vector: {exc}") from exc
