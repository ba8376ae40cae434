"""clara-integrations: CLaRa compression-native RAG for LlamaIndex, LangChain and Hugging Face.

`import clara_integrations` needs neither LlamaIndex nor LangChain: their adapters live in
`clara_integrations.llama_index` and `clara_integrations.langchain` and are imported only
from there.
"""
from .config import ClaraConfig
from .modeling import CheckpointCorruptError, ClaraModel, MissingAdapterError

__version__ = "0.1.0"

__all__ = ["CheckpointCorruptError", "ClaraConfig", "ClaraModel", "MissingAdapterError", "__version__"]
