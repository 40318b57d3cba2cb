"""`python -m steering prepare [name]`: prepare a packaged model (the default without a name) or a local `.gguf` once.

Prints the safetensors folder the model loads from; `make serve` runs it for the default model.
"""

import sys

from steering.model.gguf import is_gguf_path
from steering.model.loading import DEFAULT_MODEL, prepared_source
from steering.model.packaged import PACKAGED_MODELS, find_packaged_model

_USAGE = f"usage: python -m steering prepare [{' | '.join((DEFAULT_MODEL, *PACKAGED_MODELS))} | FILE.gguf]"

if __name__ == "__main__":
    if not 1 <= len(sys.argv[1:]) <= 2 or sys.argv[1] != "prepare":
        sys.exit(_USAGE)
    name = sys.argv[2] if len(sys.argv) == 3 else DEFAULT_MODEL
    if find_packaged_model(name) is None and not is_gguf_path(name):
        sys.exit(
            f"{name!r} is neither a packaged model nor a .gguf file (hub ids and folders need no preparing)\n{_USAGE}"
        )
    print(prepared_source(name)[0])
