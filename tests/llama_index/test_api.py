"""The LlamaIndex adapter package's public API is pinned, documented and lazily imported."""

from __future__ import annotations

import subprocess
import sys

import clara_integrations.llama_index as li
from tests.conftest import REPO_ROOT

PUBLIC = [
    "ClaraEmbedding",
    "ClaraLLM",
    "ClaraReranker",
    "ClaraRetriever",
    "ClaraSynthesizer",
    "ClaraVectorStore",
    "clara_node_parser",
]


def test_all_is_pinned_and_sorted():
    assert li.__all__ == PUBLIC


def test_every_public_class_documents_an_example():
    for name in PUBLIC:
        doc = getattr(li, name).__doc__
        assert doc and "Example:" in doc and "Args:" in doc, name


def test_missing_llama_index_gives_an_install_hint():
    code = (
        "import sys; sys.modules['llama_index'] = None; sys.modules['llama_index.core'] = None\n"
        "try:\n    import clara_integrations.llama_index\n"
        "except ImportError as e:\n    print(e)\nelse:\n    raise SystemExit('imported')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert 'pip install "clara-integrations[llama-index]"' in out.stdout
