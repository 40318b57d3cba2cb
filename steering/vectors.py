"""TaskVector: what a method computes from demonstrations, and its safetensors serialisation.

A vector travels as one safetensors blob: the tensors, plus every piece of metadata as JSON in the
safetensors header. Nothing is pickled, so reading a vector from a shared store cannot run code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from steering.protocol import Template

FORMAT_VERSION = 1

InjectionMode = Literal["add_all", "add_all_norm", "add_from_last", "add_last", "replace_last", "head_mix_last"]
INJECTION_MODES: tuple[str, ...] = (
    "add_all",
    "add_all_norm",
    "add_from_last",
    "add_last",
    "replace_last",
    "head_mix_last",
)


class FingerprintMismatch(ValueError):
    """A vector was computed on another model than the one it is applied to."""


@dataclass
class TaskVector:
    """A task captured in activations.

    Residual modes keep `residual` of shape [num_layers, hidden] (one row per decoder layer, zero where
    the method computed nothing); `layers` are the rows injected by default. `head_mix_last` keeps
    `head_means` [num_layers, heads, head_dim] and `gate_logits` [num_layers, heads].
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

    def __post_init__(self) -> None:
        if self.mode not in INJECTION_MODES:
            raise ValueError(f"unknown injection mode {self.mode!r}")
        needed = ("head_means", "gate_logits") if self.mode == "head_mix_last" else ("residual",)
        missing = [n for n in needed if n not in self.tensors]
        if missing:
            raise ValueError(f"a {self.mode} vector needs tensors {missing}")

    @property
    def num_layers(self) -> int:
        key = "head_means" if self.mode == "head_mix_last" else "residual"
        return int(self.tensors[key].shape[0])

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
        }

    def to_bytes(self) -> bytes:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.tensors.items()}
        return st_save(tensors, metadata={"steering": json.dumps(self.metadata(), sort_keys=True)})

    @classmethod
    def from_bytes(cls, data: bytes) -> TaskVector:
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header.get("__metadata__", {}).get("steering", "null") or "null")
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError("not a steering vector (missing or unsupported metadata)")
        return cls(
            method=meta["method"],
            mode=meta["mode"],
            tensors=st_load(data),
            layers=[int(x) for x in meta["layers"]],
            default_strength=float(meta["default_strength"]),
            fingerprint=meta["fingerprint"],
            template=Template(**meta["template"]),
            num_demonstrations=int(meta["num_demonstrations"]),
            compute_seconds=float(meta["compute_seconds"]),
            options=meta["options"],
            metrics=meta["metrics"],
        )
