"""A local `.gguf` file in `STEER_MODEL`: converted once to a cached safetensors folder keyed by its digest."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from steering.model import gguf as gguf_models
from steering.model.gguf import convert_gguf, is_converted, is_gguf_path, local_gguf_folder
from steering.model.loading import load_model
from tests.tiny_gguf import reference_model, tiny_llama, write_tiny_llama_gguf

TEXT = "Q: hot\nA: cold\n\nQ: big\nA: the quick brown fox"


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory):
    model, tokenizer = tiny_llama()
    path = write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf", model, tokenizer)
    return path, reference_model(model), tokenizer


def _logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_a_local_gguf_file_loads_as_the_model_it_holds(tiny_file, tmp_path: Path) -> None:
    path, reference, tokenizer = tiny_file
    lm = load_model(str(path), device="cpu", dtype="float32", cache_dir=tmp_path)
    assert lm.name == "tiny-llama"
    ids = tokenizer(TEXT).input_ids
    assert lm.tokenizer(TEXT).input_ids == ids
    assert lm.tokenizer.chat_template == tokenizer.chat_template
    torch.testing.assert_close(_logits(lm.model, ids), _logits(reference, ids), rtol=0, atol=1e-5)
    (folder,) = [p for p in (tmp_path / "models").glob("tiny-llama-*") if p.is_dir()]
    assert is_converted(folder) and not list((tmp_path / "models").glob("*.partial*"))


def test_a_converted_file_is_not_converted_again_until_it_changes(
    tiny_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _, _ = tiny_file
    first = local_gguf_folder(path, tmp_path)

    def fail(*_: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_models, "convert_gguf", fail)
    assert local_gguf_folder(path, tmp_path) == first
    edited = tmp_path / "tiny-llama.gguf"
    edited.write_bytes(path.read_bytes()[:-1] + b"\x01")  # the last tensor byte differs
    with pytest.raises(AssertionError, match="converted again"):
        local_gguf_folder(edited, tmp_path)


def test_processes_preparing_at_once_convert_once(tiny_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, _ = tiny_file
    conversions: list[Path] = []

    def counted(gguf_file: Path, target: Path) -> None:
        conversions.append(target)
        convert_gguf(gguf_file, target)

    monkeypatch.setattr(gguf_models, "convert_gguf", counted)
    folders: list[Path] = []
    threads = [threading.Thread(target=lambda: folders.append(local_gguf_folder(path, tmp_path))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(conversions) == 1 and len(set(folders)) == 1 and is_converted(folders[0])


def test_a_conversion_that_lost_the_race_keeps_the_first_folder(tiny_file, tmp_path: Path) -> None:
    path, _, _ = tiny_file
    target = tmp_path / "models" / "tiny"
    convert_gguf(path, target)
    first = (target / "config.json").stat().st_mtime_ns
    convert_gguf(path, target)  # as a process without the lock would
    assert (target / "config.json").stat().st_mtime_ns == first
    assert [p.name for p in target.parent.iterdir()] == ["tiny"]


def test_a_gguf_name_is_a_local_file_and_a_missing_one_says_so(tmp_path: Path) -> None:
    assert is_gguf_path("models/Tiny.GGUF") and not is_gguf_path("Qwen/Qwen2.5-0.5B-Instruct")
    with pytest.raises(FileNotFoundError, match=r"no GGUF file at .*missing\.gguf"):
        load_model(str(tmp_path / "missing.gguf"), cache_dir=tmp_path)
