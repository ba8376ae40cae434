"""The public surface of clara_integrations.langchain is pinned, and optional."""

from __future__ import annotations

import subprocess
import sys

import clara_integrations.langchain as lc

EXPECTED = [
    "ChatClara",
    "ClaraDocumentCompressor",
    "ClaraEmbeddings",
    "ClaraRetriever",
    "ClaraVectorStore",
    "clara_text_splitter",
    "create_clara_rag_chain",
]


def test_all_is_pinned_and_sorted():
    assert lc.__all__ == EXPECTED
    assert sorted(lc.__all__) == lc.__all__
    for name in lc.__all__:
        obj = getattr(lc, name)
        assert obj.__doc__ and "Example" in obj.__doc__, f"{name} needs a docstring with an example"


def test_langchain_is_optional_and_its_absence_names_the_extra():
    """One interpreter (imports are slow): the core imports without LangChain, and
    importing the adapters without langchain-core says which extra to install."""
    code = (
        "import sys, clara_integrations, clara_integrations.store\n"
        "assert not [m for m in sys.modules if m.startswith('langchain')], 'core imported langchain'\n"
        "sys.modules['langchain_core'] = None  # as if not installed\n"
        "try:\n    import clara_integrations.langchain\n"
        "except ImportError as e:\n    print(e)\n"
        "else:\n    raise SystemExit('no ImportError')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (
        'needs langchain-core, which is not installed: pip install "clara-integrations[langchain]"'
        in out.stdout
    )
