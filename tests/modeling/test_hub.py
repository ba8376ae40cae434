"""Model-name resolution and the embedded default base model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clara_integrations.modeling import hub
from tests.conftest import REPO_ROOT, TINY_BASE


def test_local_folder_wins(tmp_path):
    assert hub.resolve_base_model(TINY_BASE) == str(TINY_BASE)
    assert hub.resolve_base_model("tiny-llama-base", search_dirs=(TINY_BASE.parent,)) == str(
        TINY_BASE.parent / "tiny-llama-base"
    )


def test_hub_id_needs_network_opt_in(monkeypatch):
    monkeypatch.delenv("CLARA_ALLOW_NETWORK", raising=False)
    with pytest.raises(FileNotFoundError, match="allow_network=True"):
        hub.resolve_base_model("mistralai/Mistral-7B-Instruct-v0.2")
    assert (
        hub.resolve_base_model("mistralai/Mistral-7B-Instruct-v0.2", allow_network=True)
        == "mistralai/Mistral-7B-Instruct-v0.2"
    )
    monkeypatch.setenv("CLARA_ALLOW_NETWORK", "1")
    assert hub.network_allowed() is True
    with pytest.raises(FileNotFoundError, match="network use is off"):
        hub.resolve_checkpoint("apple/CLaRa-7B-E2E", "compression-16", allow_network=False)


def test_cache_dir_respects_environment(monkeypatch, tmp_path):
    for var in ("CLARA_CACHE_DIR", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "clara-integrations"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub.cache_dir() == tmp_path / "hf" / "clara-integrations"
    monkeypatch.setenv("CLARA_CACHE_DIR", str(tmp_path / "mine"))
    assert hub.cache_dir() == tmp_path / "mine"


def test_checkpoint_subfolder(tmp_path):
    (tmp_path / "compression-16").mkdir()
    assert hub.resolve_checkpoint(tmp_path, "compression-16") == tmp_path / "compression-16"
    with pytest.raises(FileNotFoundError, match="compression-128"):
        hub.resolve_checkpoint(tmp_path, "compression-128")


@pytest.mark.slow
def test_concurrent_first_use_converts_once(tmp_path):
    code = "from clara_integrations.modeling.hub import embedded_base_model_dir; print(embedded_base_model_dir())"
    env = {**os.environ, "CLARA_CACHE_DIR": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outputs[0] == outputs[1]
    folder = Path(outputs[0])
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.slow
def test_embedded_default_compresses():
    import torch

    from clara_integrations import ClaraModel

    model = ClaraModel.from_base(dtype=torch.float32)
    assert (model.tokenizer.bos_token, model.tokenizer.eos_token, model.tokenizer.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    memory = model.compress_documents(["Paris is the capital of France.", "Water boils at 100 C."])
    assert memory.shape == (2, 8, 576)
    assert torch.isfinite(memory).all()
