"""TaskVector: what a method computes from demonstrations, and its safetensors serialisation.

A vector travels as one safetensors blob: the tensors, plus every piece of metadata as JSON in the
safetensors header. Nothing is pickled, so reading a vector from a shared store cannot run code.
Reading trusts nothing: the header is checked (`steering.vectors.safetensors_reader`), the metadata is validated
(`SteeringMetadata`) and the tensors must be finite. Whether a vector fits a model is `check_for_model`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from steering.tasks.answer_end import AnswerEnd
from steering.vectors.errors import ModelMismatch, VectorImportError
from steering.vectors.modes import (
    MAX_PREFIX_TOKENS,
    PREFIX_TENSORS,
    TENSOR_NAMES,
    InjectionMode,
    ModelShape,
    expected_shapes,
    mode_spec,
)
from steering.vectors.safetensors_reader import loads_bounded, read_header
from steering.wire.method_names import VectorMethod
from steering.wire.protocol import MAX_LAYERS_PER_ENTRY, Template

FORMAT_VERSION = 1
METADATA_KEY = "steering"
METADATA_DEPTH = 32  # options and metrics nest a few levels (auto's per-candidate options and results)
# Stored metadata is read back for every vector the server loads: each part is bounded (a stored rule where answers
# end by a request's own bounds, see `steering.tasks.answer_end`), and so is the whole text before it is parsed.
MAX_JSON_FIELD_CHARS = 65_536  # options, metrics: a few kB for auto's candidates
MAX_METADATA_CHARS = 1 << 20
MAX_FINGERPRINT_CHARS = 256
MAX_COUNT = 1_000_000_000  # demonstrations, seconds


# How far an imported vector's rows may exceed the model's own activations (`check_norms`). The project's own
# vectors measured at most 5.8x (soft injection's head means on the default model), 2.1x on the tiny models.
MAX_NORM_RATIO = 100.0
# A KV prefix's keys and values must stay finite when served in float16 (its largest finite value is 65504).
MAX_PREFIX_VALUE = 65504.0
# The heads' tensors that `check_norms` bounds; every residual row is bounded by the layer's residual norm.
HEAD_MEAN_TENSORS = ("head_means", "answer_head_means")


@dataclass(frozen=True)
class ActivationScale:
    """A model's own activation norms, one figure per layer, measured once (`methods.capture.activation_scale`):
    what an imported vector's rows are compared to."""

    residual: torch.Tensor  # [layers]: a typical norm of the layer's output (the residual stream)
    heads: torch.Tensor  # [layers]: a typical norm of one head's output at the layer (its largest head's)


class FingerprintMismatch(ValueError):
    """A vector was computed on another model than the one it is applied to."""


@dataclass
class TaskVector:
    """A task captured in activations.

    Residual modes keep `residual` of shape [num_layers, hidden] (one row per decoder layer, zero where
    the method computed nothing); `layers` are the rows injected by default. `head_mix_last` keeps
    `head_means` [num_layers, heads, head_dim] and `gate_logits` [num_layers, heads]; `head_mix_answer` also
    `answer_head_means` and `answer_gate_logits` of the same shapes (`steering.vectors.modes` lists every mode).
    """

    method: str
    mode: InjectionMode
    tensors: dict[str, torch.Tensor]
    layers: list[int]
    default_strength: float
    fingerprint: str
    template: Template = field(default_factory=Template)
    num_demonstrations: int = 0
    compute_seconds: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    answer_end: AnswerEnd | None = None  # learned from the demonstrations (GGUF files have none)

    def __post_init__(self) -> None:
        missing = [n for n in mode_spec(self.mode).tensors if n not in self.tensors]
        if missing:
            raise ValueError(f"a {self.mode} vector needs tensors {missing}")

    @property
    def num_layers(self) -> int:
        return int(self.tensors[mode_spec(self.mode).tensors[0]].shape[0])

    @property
    def prefix_tokens(self) -> int:
        """The columns of a KV prefix (`kv_prefix`); 0 for a vector that holds none."""
        keys = self.tensors.get("prefix_keys")
        return int(keys.shape[2]) if keys is not None and keys.dim() == 4 else 0

    def check_fingerprint(self, fingerprint: str) -> None:
        if fingerprint != self.fingerprint:
            raise FingerprintMismatch(
                f"this vector was computed on model {self.fingerprint}, not on the loaded model {fingerprint}"
            )

    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "mode": self.mode,
            "layers": self.layers,
            "default_strength": self.default_strength,
            "fingerprint": self.fingerprint,
            "template": self.template.model_dump(),
            "num_demonstrations": self.num_demonstrations,
            "compute_seconds": self.compute_seconds,
            "options": self.options,
            "metrics": self.metrics,
            **({"answer_end": self.answer_end.model_dump()} if self.answer_end is not None else {}),
        }

    def to_bytes(self) -> bytes:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.tensors.items()}
        return st_save(tensors, metadata={"steering": json.dumps(self.metadata(), sort_keys=True)})

    @classmethod
    def from_bytes(cls, data: bytes) -> TaskVector:
        """Read a vector written by `to_bytes`, from any source: every part is checked, and anything that is
        not a well-formed steering vector raises `VectorImportError`. Model fit is `check_for_model`'s job."""
        header = read_header(data)
        if METADATA_KEY not in header.metadata:
            raise VectorImportError("not a steering vector (no 'steering' metadata)")
        meta = parse_metadata(header.metadata[METADATA_KEY])
        needed = set(mode_spec(meta.mode).tensors)
        names = set(header.tensors)
        if not needed <= names <= set(TENSOR_NAMES):
            raise VectorImportError(
                f"a {meta.mode} vector holds tensors {sorted(needed)} (and optionally {sorted(set(TENSOR_NAMES))}); "
                f"this one has {sorted(names)}"
            )
        try:
            tensors = st_load(bytes(data))
        except SafetensorError as exc:  # the header was checked; this is a backstop
            raise VectorImportError(f"unreadable tensors: {exc}") from None
        for name, tensor in tensors.items():
            if not bool(torch.isfinite(tensor).all()):
                raise VectorImportError(f"tensor {name} holds NaN or infinite values")
        return cls(
            method=meta.method,
            mode=meta.mode,
            tensors=tensors,
            layers=meta.layers,
            default_strength=meta.default_strength,
            fingerprint=meta.fingerprint,
            template=meta.template,
            num_demonstrations=meta.num_demonstrations,
            compute_seconds=meta.compute_seconds,
            options=meta.options,
            metrics=meta.metrics,
            answer_end=meta.answer_end,
        )


def _unique(values: list[int]) -> list[int]:
    return list(dict.fromkeys(values))


def _json_bounded(value: dict[str, JsonValue]) -> dict[str, JsonValue]:
    size = len(json.dumps(value))
    if size > MAX_JSON_FIELD_CHARS:
        raise ValueError(f"{size} characters as JSON; at most {MAX_JSON_FIELD_CHARS}")
    return value


JsonObject = Annotated[dict[str, JsonValue], AfterValidator(_json_bounded)]


class SteeringMetadata(BaseModel):
    """The `steering` metadata of a vector file, as `TaskVector.metadata` writes it."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)

    format_version: Literal[1]
    method: VectorMethod
    mode: InjectionMode
    layers: Annotated[
        list[Annotated[int, Field(ge=0)]],
        Field(min_length=1, max_length=MAX_LAYERS_PER_ENTRY),  # the layers of a request that names the task
        AfterValidator(_unique),
    ]
    default_strength: float
    fingerprint: Annotated[str, Field(max_length=MAX_FINGERPRINT_CHARS)]
    template: Template
    num_demonstrations: Annotated[int, Field(ge=0, le=MAX_COUNT)]
    compute_seconds: Annotated[float, Field(ge=0.0, le=MAX_COUNT)]
    # JSON values with finite numbers only: they are stored and served as JSON, which has no NaN.
    options: JsonObject
    metrics: JsonObject
    answer_end: AnswerEnd | None = None


def parse_metadata(text: str) -> SteeringMetadata:
    if len(text) > MAX_METADATA_CHARS:
        raise VectorImportError(f"the steering metadata has {len(text)} characters; at most {MAX_METADATA_CHARS}")
    raw = loads_bounded(text, METADATA_DEPTH, "the steering metadata")
    if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
        raise VectorImportError("not a steering vector (missing or unsupported metadata)")
    try:
        return SteeringMetadata.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'metadata'}: {e['msg']}" for e in exc.errors()[:3]
        )
        raise VectorImportError(f"invalid steering metadata: {problems}") from None


# ------------------------------------------------------------------------------------- model fit


def check_layers(layers: Iterable[int], num_layers: int) -> None:
    """Each layer once (else `VectorImportError`), each within `0..num_layers-1` (else `ModelMismatch`)."""
    layers = list(layers)
    if len(set(layers)) != len(layers):
        raise VectorImportError(f"the vector's layers {layers} repeat a layer")
    bad = [la for la in layers if not 0 <= la < num_layers]
    if bad:
        raise ModelMismatch(f"layer {bad[0]} is out of range: the model has {num_layers} layers (0..{num_layers - 1})")


def check_for_model(vector: TaskVector, model: ModelShape, scale: ActivationScale | None = None) -> None:
    """Refuse (`ModelMismatch`) a vector whose tensor shapes or layers do not fit `model`; with the model's
    `scale`, also one whose rows dwarf its activations (`VectorImportError`, see `check_norms`)."""
    if "prefix_keys" in vector.tensors and not 1 <= vector.prefix_tokens <= MAX_PREFIX_TOKENS:
        raise VectorImportError(f"a KV prefix holds 1 to {MAX_PREFIX_TOKENS} tokens; this one {vector.prefix_tokens}")
    shapes = expected_shapes(model, vector.prefix_tokens)
    for name, tensor in vector.tensors.items():
        want = shapes.get(name)
        if want is None:
            raise VectorImportError(f"unknown tensor {name!r} (a vector holds {list(TENSOR_NAMES)})")
        if tuple(tensor.shape) != want:
            raise ModelMismatch(f"tensor {name} has shape {list(tensor.shape)}, this model needs {list(want)}")
    check_layers(vector.layers, model.num_layers)
    if scale is not None:
        check_norms(vector, scale)


def _norms(tensor: torch.Tensor) -> torch.Tensor:
    """Norms over the last dimension, scaled first so that finite values far beyond float range cannot overflow."""
    values = tensor.detach().to("cpu", torch.float64)
    peak = values.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return peak.squeeze(-1) * (values / peak).norm(dim=-1)


def _check_prefix_values(name: str, tensor: torch.Tensor) -> None:
    peak = float(tensor.abs().max()) if tensor.numel() else 0.0
    if peak > MAX_PREFIX_VALUE:
        raise VectorImportError(
            f"tensor {name} holds a value of magnitude {peak:.4g}; a KV prefix's values are at most "
            f"{MAX_PREFIX_VALUE:g} (float16's range, in which it may be served)"
        )


def check_norms(vector: TaskVector, scale: ActivationScale, max_ratio: float = MAX_NORM_RATIO) -> None:
    """Refuse (`VectorImportError`) a vector with a residual row, or a head's mean, over `max_ratio` times the
    model's own norm there: it would swamp the activations it is added to (or mixed into) and answer garbage;
    and a KV prefix with a value past float16's range (it would turn infinite when served in half precision)."""
    for name, tensor in vector.tensors.items():
        if name == "residual":
            reference, what = scale.residual, "residual"
        elif name in HEAD_MEAN_TENSORS:
            reference, what = scale.heads, "head output"
        elif name in PREFIX_TENSORS:
            _check_prefix_values(name, tensor)
            continue
        else:
            continue
        norms = _norms(tensor)
        per_layer = norms if norms.dim() == 1 else norms.amax(dim=-1)
        ratios = per_layer / reference.to(torch.float64).clamp_min(1e-6)
        layer = int(ratios.argmax())
        if float(ratios[layer]) > max_ratio:
            raise VectorImportError(
                f"tensor {name} at layer {layer} has norm {float(per_layer[layer]):.4g}, {float(ratios[layer]):.4g} "
                f"times this model's {what} norm there ({float(reference[layer]):.4g}, measured at start-up); "
                f"at most {max_ratio:g} times is accepted"
            )
