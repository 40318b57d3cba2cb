"""A strict check of a safetensors header, before the `safetensors` library is trusted with the bytes.

Checked, cheaply (the header only, never the tensor data): the 8-byte header length against the data and
`MAX_HEADER_BYTES`; the JSON nesting depth before `json.loads` recurses; each tensor entry (a float dtype,
a shape of at most `MAX_RANK` non-negative ints, data offsets that match dtype x shape); tensors laid out back
to back from the start of the data section to its end, with no gap or overlap, as the format requires; and
`__metadata__` as a map of strings. Every failure raises `VectorImportError`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from steering.vectors.errors import VectorImportError

MAX_HEADER_BYTES = 4 << 20
HEADER_DEPTH = 3  # {"name": {"shape": [...]}}
MAX_RANK = 8
DTYPE_SIZES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
METADATA_KEY = "__metadata__"

# A JSON string, or an unterminated one up to the end (possessive, so the scan stays linear on any input).
_STRING = re.compile(r'"[^"\\]*+(?:\\(?:.|\Z)[^"\\]*+)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def json_depth(text: str) -> int:
    """How deep `text` nests arrays and objects, brackets inside strings aside; linear time, no recursion."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text)).encode()
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps, dtype=np.int32).max())


def loads_bounded(text: str, max_depth: int, what: str) -> Any:
    """`json.loads`, refusing input nested deeper than `max_depth` before it is parsed."""
    depth = json_depth(text)
    if depth > max_depth:
        raise VectorImportError(f"{what} nests {depth} levels deep (at most {max_depth})")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError, and so are over-long ints
        raise VectorImportError(f"{what} is not valid JSON: {exc}") from None


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(name: str, raw: Any) -> TensorEntry:
    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
        raise VectorImportError(f"tensor {name!r}: want exactly dtype, shape and data_offsets")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise VectorImportError(f"tensor {name!r} has dtype {dtype!r}; a steering vector holds {sorted(DTYPE_SIZES)}")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_is_int(n) and n >= 0 for n in shape):
        raise VectorImportError(f"tensor {name!r}: shape must be a list of at most {MAX_RANK} non-negative ints")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(n) for n in offsets)):
        raise VectorImportError(f"tensor {name!r}: data_offsets must be two ints")
    begin, end = offsets
    if not 0 <= begin <= end or end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise VectorImportError(f"tensor {name!r}: data_offsets {offsets} do not hold a {dtype} tensor of {shape}")
    return TensorEntry(dtype, tuple(shape), begin, end)


def _metadata(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise VectorImportError(f"{METADATA_KEY} must map names to strings")
    return raw


def read_header(data: bytes | bytearray | memoryview) -> SafetensorsHeader:
    """The checked header of a safetensors blob; raises `VectorImportError` for anything malformed."""
    view = memoryview(data).cast("B")
    if len(view) < 8:
        raise VectorImportError("too short for a safetensors file (no 8-byte header length)")
    size = int.from_bytes(view[:8], "little")
    if size > MAX_HEADER_BYTES or 8 + size > len(view):
        raise VectorImportError(
            f"the header length {size} is over {MAX_HEADER_BYTES} bytes or past the end of the data ({len(view)} bytes)"
        )
    try:
        text = str(view[8 : 8 + size], "utf-8")
    except UnicodeDecodeError:
        raise VectorImportError("the safetensors header is not UTF-8") from None
    header = loads_bounded(text, HEADER_DEPTH, "the safetensors header")
    if not isinstance(header, dict):
        raise VectorImportError("the safetensors header is not a JSON object")
    metadata = _metadata(header.pop(METADATA_KEY, {}))
    tensors = {name: _entry(name, raw) for name, raw in header.items()}
    expected = 0
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin != expected:
            raise VectorImportError(f"tensor {name!r} starts at {entry.begin}, want {expected} (a gap or an overlap)")
        expected = entry.end
    if expected != len(view) - 8 - size:
        raise VectorImportError(f"the tensors hold {expected} bytes, the data section has {len(view) - 8 - size}")
    return SafetensorsHeader(metadata, tensors)
