"""The errors of vector files: one type for every file that cannot be used, one subtype for the wrong model."""

from __future__ import annotations


class VectorImportError(ValueError):
    """A file that is not a usable steering vector (wrong format, shape, layers or model family)."""


class ModelMismatch(VectorImportError):
    """A well-formed vector whose layers or tensor shapes do not fit the model it is checked against."""
