"""A base folder whose config.json has `auto_map` never runs its code or asks on stdin."""

from __future__ import annotations

import builtins
import json
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch

from clara_integrations import ClaraConfig, ClaraModel
from clara_integrations.modeling.adapters import ENCODER_ADAPTER

AUTO_MAP = {
    "AutoConfig": "configuration_x.XConfig",
    "AutoModelForCausalLM": "modeling_x.XForCausalLM",
    "AutoTokenizer": [None, "tokenization_x.XTokenizerFast"],
}


def _copy_with_auto_map(tiny_base, folder, **changes):
    shutil.copytree(tiny_base, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(auto_map=AUTO_MAP, **changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture()
def tiny_base(fixture_dir):
    return fixture_dir / "tiny-llama-base"


@pytest.fixture()
def prompts(monkeypatch):
    """Every `input()` call (transformers' "[y/N]" question) is recorded and refused, and
    every trust_remote_code value transformers resolves is recorded."""
    asked, resolved = [], []

    def no_input(prompt=""):
        asked.append(prompt)
        raise EOFError("stdin is closed")

    import transformers.dynamic_module_utils as dynamic

    original = dynamic.resolve_trust_remote_code

    def spy(trust_remote_code, *args, **kwargs):
        resolved.append(trust_remote_code)
        return original(trust_remote_code, *args, **kwargs)

    monkeypatch.setattr(builtins, "input", no_input)
    # The auto classes import the function by name: patch every module that holds it.
    for name, module in list(sys.modules.items()):
        if (
            name.startswith("transformers.")
            and getattr(module, "resolve_trust_remote_code", None) is original
        ):
            monkeypatch.setattr(module, "resolve_trust_remote_code", spy)
    return SimpleNamespace(asked=asked, resolved=resolved)


def test_base_folder_with_auto_map_loads_without_prompting(tiny_base, tmp_path, prompts):
    from training.pipeline import load_tokenizer
    from training.teachers import HFTeacher

    folder = _copy_with_auto_map(tiny_base, tmp_path / "base")
    config = ClaraConfig.for_training(str(folder), doc_max_length=64, compr_rate=16, lora_r=4)
    model = ClaraModel.from_base(folder, config, adapters=[ENCODER_ADAPTER], dtype=torch.float32)
    tokenizer, _ = load_tokenizer(config)
    HFTeacher(str(folder), device="cpu", max_new_tokens=1)
    assert len(tokenizer) == len(model.tokenizer)
    assert not prompts.asked
    # Every load decided explicitly: an unset (None) value is what lets transformers prompt.
    assert prompts.resolved and all(value is False for value in prompts.resolved), prompts.resolved


def test_base_folder_needing_custom_code_fails_fast_with_the_fix(tiny_base, tmp_path, prompts):
    folder = _copy_with_auto_map(tiny_base, tmp_path / "custom", model_type="x-custom-llama")
    config = ClaraConfig.for_training(str(folder), doc_max_length=64, compr_rate=16, lora_r=4)
    with pytest.raises(ValueError, match=r"needs its own Python code.*supports natively"):
        ClaraModel.from_base(folder, config, adapters=[], dtype=torch.float32)
    assert not prompts.asked
