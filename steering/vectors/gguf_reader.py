"""A strict GGUF reader for files that come from users: every count and length is checked before it is used.

`gguf.GGUFReader` trusts the file: it memory-maps it and builds arrays of whatever length a header declares,
so a 68-byte file that declares an array of 2^63-1 bytes hangs it. This reader parses GGUF v2 and v3
(little-endian, as llama.cpp writes them) from bytes in memory and checks, before it allocates or loops:

- every length and count against the bytes left (an array of n elements of s bytes needs n*s bytes; a count
  of key-value pairs or tensors needs at least its minimal encoded size per entry);
- the nesting depth of arrays, and the number of items parsed one by one in Python (which bounds the time);
- tensor infos: unique names of at most 63 bytes, 1 to 4 dimensions, a known ggml type, offsets aligned to
  `general.alignment` (a power of two), data inside the file and no two tensors overlapping.

Every failure raises `VectorImportError`. What the file means (a control vector or not) is the caller's
business: see `steering.vectors.export.read_gguf_directions`.
"""

from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from steering.vectors.errors import VectorImportError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
KEY_ALIGNMENT = "general.alignment"
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 63  # GGML_MAX_NAME (64) less the terminating NUL
MAX_NESTING = 4  # arrays of arrays of ...; llama.cpp itself writes none
MAX_ITEMS = 65_536  # keys, strings, arrays and tensors parsed one at a time

# Minimal encoded sizes, to bound a declared count by the bytes that could hold it.
_MIN_KV = 8 + 1 + 4 + 1  # key length, a one-byte key, value type, a one-byte value
_MIN_TENSOR_INFO = 8 + 1 + 4 + 8 + 4 + 8  # name length, a one-byte name, n_dims, one dim, type, offset
_MIN_STRING = 8
_MIN_ARRAY = 4 + 8

_NUMERIC: dict[GGUFValueType, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: the fastest-varying dimension first
    type: GGMLQuantizationType
    offset: int  # from the start of the data section
    nbytes: int


@dataclass(frozen=True)
class GGUFContents:
    version: int
    fields: dict[str, Any]  # numbers, bools, strings; numeric arrays as numpy arrays, others as lists
    field_types: dict[str, GGUFValueType]
    tensors: tuple[TensorInfo, ...]
    data_start: int
    buffer: memoryview

    def tensor_bytes(self, tensor: TensorInfo) -> memoryview:
        start = self.data_start + tensor.offset
        return self.buffer[start : start + tensor.nbytes]


class _Cursor:
    def __init__(self, data: memoryview) -> None:
        self.data, self.pos, self.items = data, 0, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def need(self, nbytes: int, what: str) -> None:
        if nbytes > self.left():
            raise VectorImportError(f"truncated GGUF file: {what} needs {nbytes} bytes, {self.left()} are left")

    def take(self, nbytes: int, what: str) -> memoryview:
        self.need(nbytes, what)
        view = self.data[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return view

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])

    def u64(self, what: str) -> int:
        return int(struct.unpack("<Q", self.take(8, what))[0])

    def count(self, n: int, min_size: int, what: str) -> None:
        """`n` entries of at least `min_size` bytes each must fit in what is left, and in the item budget."""
        self.need(n * min_size, f"{n} {what}")
        self.items += n
        if self.items > MAX_ITEMS:
            raise VectorImportError(f"GGUF file has too many entries (more than {MAX_ITEMS}) for a control vector")

    def string(self, what: str) -> str:
        raw = self.take(self.u64(f"the length of {what}"), what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            raise VectorImportError(f"{what} is not valid UTF-8") from None

    def value_type(self, what: str) -> GGUFValueType:
        code = self.u32(what)
        try:
            return GGUFValueType(code)
        except ValueError:
            raise VectorImportError(f"unknown GGUF value type {code} in {what}") from None


def _value(cur: _Cursor, vtype: GGUFValueType, what: str, depth: int = 0) -> Any:
    if vtype == GGUFValueType.STRING:
        return cur.string(what)
    if vtype == GGUFValueType.ARRAY:
        return _array(cur, what, depth + 1)
    dtype = _NUMERIC[vtype]
    value = np.frombuffer(cur.take(dtype.itemsize, what), dtype)[0]
    if vtype == GGUFValueType.BOOL:
        if value > 1:
            raise VectorImportError(f"{what} is a bool stored as {int(value)}")
        return bool(value)
    return value.item()


def _array(cur: _Cursor, what: str, depth: int) -> Any:
    if depth > MAX_NESTING:
        raise VectorImportError(f"{what} nests arrays deeper than {MAX_NESTING} levels")
    etype = cur.value_type(f"the element type of {what}")
    n = cur.u64(f"the length of {what}")
    if etype in _NUMERIC:
        dtype = _NUMERIC[etype]
        values = np.frombuffer(cur.take(n * dtype.itemsize, f"{what} ({n} x {etype.name})"), dtype)
        if etype == GGUFValueType.BOOL and values.size and values.max() > 1:
            raise VectorImportError(f"{what} holds a bool that is neither 0 nor 1")
        return values
    cur.count(n, _MIN_STRING if etype == GGUFValueType.STRING else _MIN_ARRAY, f"elements of {what}")
    return [_value(cur, etype, f"{what}[{i}]", depth) for i in range(n)]


def _fields(cur: _Cursor, n_kv: int) -> tuple[dict[str, Any], dict[str, GGUFValueType]]:
    fields: dict[str, Any] = {}
    types: dict[str, GGUFValueType] = {}
    for i in range(n_kv):
        key = cur.string(f"key {i}")
        if not key or key in fields:
            raise VectorImportError(f"GGUF key {i} ({key!r}) is empty or repeated")
        vtype = cur.value_type(f"the type of {key}")
        fields[key], types[key] = _value(cur, vtype, key), vtype
    return fields, types


def _alignment(fields: dict[str, Any], types: dict[str, GGUFValueType]) -> int:
    if KEY_ALIGNMENT not in fields:
        return DEFAULT_ALIGNMENT
    value = fields[KEY_ALIGNMENT]
    if types[KEY_ALIGNMENT] != GGUFValueType.UINT32 or value <= 0 or value & (value - 1):
        raise VectorImportError(f"{KEY_ALIGNMENT} must be a UINT32 power of two, got {value!r}")
    return int(value)


def _tensor_info(cur: _Cursor, i: int, seen: set[str]) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int]:
    name = cur.string(f"the name of tensor {i}")
    if not name or len(name.encode()) > MAX_NAME_BYTES or name in seen:
        raise VectorImportError(f"tensor {i} has an empty, repeated or over-long name ({name[:80]!r})")
    seen.add(name)
    n_dims = cur.u32(f"the dimension count of {name}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise VectorImportError(f"tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
    shape = tuple(cur.u64(f"the shape of {name}") for _ in range(n_dims))
    code = cur.u32(f"the type of {name}")
    try:
        ttype = GGMLQuantizationType(code)
    except ValueError:
        raise VectorImportError(f"tensor {name} has unknown ggml type {code}") from None
    if ttype not in GGML_QUANT_SIZES:
        raise VectorImportError(f"tensor {name} has unsupported ggml type {ttype.name}")
    return name, shape, ttype, cur.u64(f"the offset of {name}")


def _place(
    infos: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]], data_start: int, size: int, alignment: int
) -> tuple[TensorInfo, ...]:
    """Sizes from shapes and types; each tensor aligned, inside the file and clear of the others."""
    tensors = []
    for name, shape, ttype, offset in infos:
        block, type_size = GGML_QUANT_SIZES[ttype]
        if shape[0] % block:
            raise VectorImportError(f"tensor {name}: {shape[0]} is not a multiple of the {ttype.name} block {block}")
        nbytes = math.prod(shape) // block * type_size
        if offset % alignment or data_start + offset + nbytes > size:
            raise VectorImportError(
                f"tensor {name} ({nbytes} bytes at offset {offset}) is misaligned or runs past the end of the file"
            )
        tensors.append(TensorInfo(name, shape, ttype, offset, nbytes))
    ordered = sorted(tensors, key=lambda t: t.offset)
    for before, after in itertools.pairwise(ordered):
        if after.offset < before.offset + before.nbytes:
            raise VectorImportError(f"tensors {before.name} and {after.name} overlap")
    return tuple(tensors)


def parse_gguf(data: bytes | bytearray | memoryview) -> GGUFContents:
    """Parse a GGUF v2/v3 file held in memory; anything malformed raises `VectorImportError`."""
    buffer = memoryview(data).cast("B")
    cur = _Cursor(buffer)
    if bytes(cur.take(4, "the magic")) != MAGIC:
        raise VectorImportError("not a GGUF file (the first bytes are not 'GGUF')")
    version = cur.u32("the version")
    if version not in VERSIONS:
        raise VectorImportError(f"unsupported GGUF version {version} (2 and 3, little-endian, are read)")
    n_tensors = cur.u64("the tensor count")
    n_kv = cur.u64("the key-value count")
    cur.need(n_kv * _MIN_KV + n_tensors * _MIN_TENSOR_INFO, f"{n_kv} key-value pairs and {n_tensors} tensor infos")
    cur.count(n_kv + n_tensors, 0, "key-value pairs and tensors")
    fields, types = _fields(cur, n_kv)
    alignment = _alignment(fields, types)
    seen: set[str] = set()
    infos = [_tensor_info(cur, i, seen) for i in range(n_tensors)]
    data_start = -(-cur.pos // alignment) * alignment
    tensors = _place(infos, data_start, len(buffer), alignment)
    return GGUFContents(version, fields, types, tensors, data_start, buffer)
