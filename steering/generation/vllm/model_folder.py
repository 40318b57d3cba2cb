"""A folder vLLM can load holding exactly the weights the service loaded (so vector fingerprints match).

A model given as a folder is served from it. Anything else (the packaged default, `tiny:<type>`, a hub id,
a GGUF file) is saved once from the loaded transformers model as a safetensors folder under the cache
directory, named by the model's fingerprint, and reused by later starts.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from steering.model.loading import LoadedModel


def vllm_model_folder(lm: LoadedModel, requested: str, cache_dir: Path) -> Path:
    given = Path(requested)
    if given.is_dir() and (given / "config.json").exists():
        return given
    folder = cache_dir / "vllm-models" / re.sub(r"[^A-Za-z0-9_.@-]", "_", lm.fingerprint)
    if (folder / "config.json").exists():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    lm.model.save_pretrained(partial)
    lm.tokenizer.save_pretrained(partial)
    partial.rename(folder)  # whole or absent: another process never reads a half-written folder
    return folder
