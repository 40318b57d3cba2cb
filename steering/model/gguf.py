"""GGUF files converted once to cached safetensors folders: a local `.gguf` file, or a packaged model's assembled file.

Loading a GGUF file in transformers dequantises every tensor (half a minute for 135M parameters, minutes
for a billion); the float32 safetensors folder it is saved as loads in seconds. Conversions are safe when
two processes start at once: an exclusive lock per target where the platform has one, and always a
private `.partial` folder renamed into place, so a folder that exists is complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

try:
    import fcntl
except ImportError:  # Windows: the atomic rename alone keeps concurrent conversions safe
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"
_CHUNK = 8 * 1024 * 1024


def is_gguf_path(name_or_path: str) -> bool:
    """Whether `STEER_MODEL` names a local GGUF file (what llama.cpp users have); no hub id ends so."""
    return name_or_path.lower().endswith(GGUF_SUFFIX)


def is_converted(folder: Path) -> bool:
    # Folders only appear by renaming a finished `.partial`, so a config beside any weights means complete.
    return (folder / "config.json").is_file() and any(folder.glob("model*.safetensors*"))


@contextmanager
def exclusive(target: Path) -> Iterator[None]:
    """Hold `<target>.lock` while preparing `target`, so a second process waits instead of redoing the work."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(target.with_name(target.name + ".lock"), "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def file_sha256(path: Path, *, label: str | None = None) -> str:
    digest = hashlib.sha256()
    with (
        path.open("rb") as source,
        tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=label or f"sha256 {path.name}") as bar,
    ):
        while block := source.read(_CHUNK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def convert_gguf(gguf_file: Path, target: Path) -> None:
    """Load `gguf_file` in float32 and save it with its tokenizer as the safetensors folder `target`.

    The caller holds `exclusive(target)`; if another process still got there first, its folder is kept.
    """
    log.info("converting %s from GGUF to safetensors in %s (once)", gguf_file.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    # The weights are dequantised to float32 on load; drop the quantizer so the model can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=target.name + ".partial-", dir=target.parent))
    partial.chmod(0o755)  # mkdtemp makes it private to this user; the finished folder is an ordinary cache entry
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        os.replace(partial, target)
    except OSError:
        if not is_converted(target):
            raise
        log.info("%s was converted by another process meanwhile", target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def local_gguf_folder(gguf_file: Path, cache_dir: Path) -> Path:
    """A local GGUF file's converted folder, keyed by the file's sha256 (an edited file converts again)."""
    gguf_file = gguf_file.expanduser().resolve()
    if not gguf_file.is_file():
        raise FileNotFoundError(f"no GGUF file at {gguf_file}")
    digest = file_sha256(gguf_file)
    target = cache_dir / "models" / f"{gguf_file.stem}-{digest[:16]}"
    if is_converted(target):
        return target
    with exclusive(target):
        if not is_converted(target):
            convert_gguf(gguf_file, target)
    return target
