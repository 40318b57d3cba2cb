"""The names of the steering methods: the one list, in the order the wire format lists them.

Free of dependencies so that the wire models (`protocol.py`, hence the OpenAPI schema), vector metadata and
the `steer` command can name methods without importing torch. Everything else about a method is declared in
its own module (`SPEC` in `steering/methods/<name>.py`); `steering/methods/registry.py` finds those and refuses
to load unless they name exactly these methods.
"""

from __future__ import annotations

from typing import Literal, get_args

# What a vector file can name: every method but `auto`, which only chooses among these.
VectorMethod = Literal["icv", "task_vector", "function_vector", "soft_injection", "context_tuning", "contrastive"]
Method = Literal[VectorMethod, "auto"]

METHOD_NAMES: tuple[str, ...] = get_args(Method)
VECTOR_METHOD_NAMES: tuple[str, ...] = get_args(VectorMethod)
