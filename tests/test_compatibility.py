"""What docs/COMPATIBILITY.md claims: every supported model type has a tiny model that runs the invariant suite
(tests/test_steering_core.py), loads from a folder, and some are served over HTTP from one; the table is current."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import DynamicCache

from app.settings import Settings
from scripts.compat_table import DOC_PATH, render
from steering.model.arch import UnsupportedArchitecture, resolve_architecture, supported_model_types
from steering.model.loading import LoadedModel, load_model
from steering.model.tiny import TINY_MODELS, TINY_SPECS, build_tiny_model, tiny_model_type
from tests.api_helpers import ANTONYMS, running_app, settings, task_body, wait_task

# Served from a saved folder by the app and steered over HTTP: a sliding-window type, and a mixture of experts
# with attention sinks and a hybrid cache.
SERVED_TYPES = ("mistral", "gpt_oss")
SERVED_METHODS = {
    "function_vector": {"num_prompts": 6, "k_shot": 3, "num_corrupted": 3},
    "soft_injection": {"num_prompts": 6, "k_shot": 3, "steps": 4, "eval_every": 2, "batch_size": 8},
}
PROMPT = "Q: big dog\nA:"


def test_every_supported_type_has_a_tiny_model() -> None:
    assert sorted({tiny_model_type(name) for name in TINY_MODELS}) == supported_model_types()
    assert set(supported_model_types()) <= set(TINY_MODELS)  # each type's own name builds its plain tiny model


def test_an_unsupported_type_lists_every_supported_one() -> None:
    model = nn.Linear(2, 2)
    model.config = type("Config", (), {"model_type": "mamba"})()
    with pytest.raises(UnsupportedArchitecture, match="'mamba' is not supported") as info:
        resolve_architecture(model)
    assert all(model_type in str(info.value) for model_type in supported_model_types())


def test_the_checked_in_table_is_the_generated_one() -> None:
    assert DOC_PATH.read_text() == render(), "regenerate: python -m scripts.compat_table"


def test_tiny_models_have_what_the_table_says_they_exercise(tiny_lm: LoadedModel) -> None:
    config = tiny_lm.model.config
    name = tiny_lm.name.removeprefix("tiny:")
    assert config.model_type == tiny_model_type(name)
    exercises = TINY_SPECS[name].exercises
    sliding = [layer.is_sliding for layer in DynamicCache(config=config).layers]
    assert any(sliding) == ("sliding window" in exercises)
    if "alternate layers" in exercises:
        assert sliding == [True, False]
    experts = {n for n, _ in tiny_lm.model.named_modules() if n.endswith(".experts")}
    assert bool(experts) == ("mixture of experts" in exercises)
    if experts:
        expert_weights = [p for n, p in tiny_lm.model.named_parameters() if ".experts." in n]
        assert expert_weights and all(p.shape[0] == 4 for p in expert_weights if p.dim() == 3)


def test_a_saved_folder_loads_to_the_same_model(tiny_lm: LoadedModel, tmp_path: Path) -> None:
    """What users bring is a folder (or a hub id, which becomes one): it must load, resolve and compute alike."""
    folder = tmp_path / tiny_lm.model.config.model_type
    tiny_lm.model.save_pretrained(folder)
    tiny_lm.tokenizer.save_pretrained(folder)
    loaded = load_model(str(folder))  # the device and dtype tiny_lm got
    ids = torch.tensor([tiny_lm.tokenizer(PROMPT)["input_ids"]], device=tiny_lm.device)
    with torch.inference_mode():
        assert torch.allclose(loaded.model(input_ids=ids).logits, tiny_lm.model(input_ids=ids).logits, atol=1e-5)
    assert loaded.arch.num_heads == tiny_lm.arch.num_heads and loaded.arch.head_dim == tiny_lm.arch.head_dim


@pytest.mark.parametrize("model_type", SERVED_TYPES)
async def test_served_from_a_local_folder(model_type: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """STEER_MODEL=<folder> of a non-llama type: head-level tasks compute (their head scans and gate training
    re-run the last token on a cached prefix) and steer generations: strength 0 is the plain model, 8 is not."""
    model, tokenizer = build_tiny_model(model_type)
    folder = tmp_path / f"tiny-{model_type}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    monkeypatch.setenv("STEER_MODEL", str(folder))
    others = settings(tmp_path, dtype="float32", device="cpu").model_dump(exclude={"model"})
    async with running_app(Settings(**others)) as (_, client):
        assert (await client.get("/v1/models")).json()["data"][0]["id"] == str(folder)
        plain = await client.post("/v1/generate", json={"prompt": PROMPT, "max_new_tokens": 6})
        assert plain.status_code == 200, plain.text
        for method, options in SERVED_METHODS.items():
            created = await client.post("/v1/tasks", json=task_body(ANTONYMS, method=method, options=options))
            assert created.status_code == 202, created.text
            info = await wait_task(client, created.json()["id"])
            assert info["status"] == "ready", info
            texts = {}
            for strength in (0.0, 8.0):
                steering = [{"task": info["id"], "strength": strength}]
                body = {"prompt": PROMPT, "max_new_tokens": 6, "steering": steering}
                steered = await client.post("/v1/generate", json=body)
                assert steered.status_code == 200, steered.text
                texts[strength] = steered.json()["text"]
            assert texts[0.0] == plain.json()["text"] != texts[8.0]
