"""clara-integrations: CLaRa compression-native RAG for LlamaIndex, LangChain and Hugging Face.

`import clara_integrations` needs neither LlamaIndex nor LangChain: their adapters live in
`clara_integrations.llama_index` and `clara_integrations.langchain` and are imported only
from there. The model classes are imported on first use, so `clara_integrations.store`
loads without transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "CheckpointCorruptError",
    "ClaraConfig",
    "ClaraError",
    "ClaraModel",
    "MissingAdapterError",
    "__version__",
]

_LAZY = {
    "ClaraError": "clara_integrations.errors",
    "ClaraConfig": "clara_integrations.config",
    "ClaraModel": "clara_integrations.modeling",
    "CheckpointCorruptError": "clara_integrations.modeling",
    "MissingAdapterError": "clara_integrations.modeling",
}

if TYPE_CHECKING:
    from .config import ClaraConfig
    from .errors import ClaraError
    from .modeling import CheckpointCorruptError, ClaraModel, MissingAdapterError


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clara_integrations' has no attribute {name!r}")
