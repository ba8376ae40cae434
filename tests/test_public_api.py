"""The public API is pinned, and the core imports no framework."""

from __future__ import annotations

import subprocess
import sys

import clara_integrations
from tests.conftest import REPO_ROOT


def test_top_level_all_is_pinned_and_sorted():
    assert clara_integrations.__all__ == sorted(clara_integrations.__all__)
    assert set(clara_integrations.__all__) == {
        "CheckpointCorruptError",
        "ClaraConfig",
        "ClaraError",
        "ClaraModel",
        "MissingAdapterError",
        "__version__",
    }


def test_core_imports_no_framework():
    code = (
        "import sys, clara_integrations, clara_integrations.modeling, clara_integrations.store; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('llama_index', 'langchain_core', 'langchain')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_store_imports_without_transformers():
    code = (
        "import sys, clara_integrations.store; "
        "assert 'transformers' not in sys.modules and 'peft' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_core_imports_without_posix_only_modules():
    """As on Windows: no `fcntl` (locks go through filelock)."""
    code = (
        "import sys; sys.modules['fcntl'] = None; "
        "import clara_integrations.modeling, clara_integrations.store, clara_integrations.store._dirlock"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
