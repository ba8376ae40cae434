"""The manifest: the single commit point of a persisted store.

``manifest.json`` names exactly which files make up the current version (segment files
with their row ranges, the alive-row bitmap, the node database, the index) together with
sizes and blake2b checksums. ``persist`` writes every other file first, under a fresh
name, makes it durable, and only then atomically replaces the manifest; files that no
manifest names are garbage.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ._files import is_data_file_name
from .config import StoreConfig
from .errors import StoreCorruptError

__all__ = ["FORMAT_VERSION", "FileEntry", "IndexEntry", "Manifest", "SegmentEntry"]

#: Current on-disk format. Loaders accept every version listed in ``_READABLE``.
FORMAT_VERSION = 1
_READABLE = (1,)
MANIFEST_NAME = "manifest.json"


class FileEntry(BaseModel):
    """A file of the store with its size and checksum."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    file: str
    bytes: int
    blake2b: str

    @field_validator("file")
    @classmethod
    def _plain_store_name(cls, name: str) -> str:
        return _confined(name)


class SegmentEntry(FileEntry):
    """An immutable segment: ``rows`` memory rows starting at global row ``start``.

    Layout: ``rows`` float32 inverse L2 norms, then ``rows * dim`` raw elements.
    """

    start: int
    rows: int


class IndexEntry(BaseModel):
    """The ANN index: rows ``[0, n_indexed)`` are in it; later rows are scanned exactly."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str
    index: FileEntry
    reducer: FileEntry | None
    n_indexed: int
    trained_on: int


class Manifest(BaseModel):
    """Everything needed to open one version of a store."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format_version: int = FORMAT_VERSION
    store_uid: str
    generation: int
    config: StoreConfig
    fingerprint: str
    db_file: str
    n_rows: int
    n_live: int
    segments: list[SegmentEntry]
    alive: FileEntry
    index: IndexEntry | None = None

    @field_validator("db_file")
    @classmethod
    def _plain_db_name(cls, name: str) -> str:
        return _confined(name)

    def to_bytes(self) -> bytes:
        """JSON with a trailing checksum of the body, so a damaged manifest is detected."""
        body = self.model_dump(mode="json")
        digest = hashlib.blake2b(_canonical(body), digest_size=16).hexdigest()
        return json.dumps({**body, "checksum": digest}, indent=1).encode()

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        """Read and check ``directory/manifest.json``.

        Raises:
            StoreCorruptError: missing, unreadable, checksum mismatch, or a format
                version this library cannot read (the message names the file).
        """
        path = Path(directory) / MANIFEST_NAME
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise StoreCorruptError(
                f"no store at {directory}: {path} does not exist", path
            ) from None
        except (OSError, ValueError) as exc:
            raise StoreCorruptError(f"cannot read manifest {path}: {exc}", path) from exc
        if not isinstance(raw, dict):
            raise StoreCorruptError(f"manifest {path} is not a JSON object", path)
        checksum = raw.pop("checksum", None)
        if checksum != hashlib.blake2b(_canonical(raw), digest_size=16).hexdigest():
            raise StoreCorruptError(f"manifest {path} fails its checksum", path)
        raw = _upgrade(raw, path)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise StoreCorruptError(f"manifest {path} is invalid: {exc}", path) from exc


def _confined(name: str) -> str:
    """Every file of a store is a plain name of ours inside the store directory: a
    manifest naming ``../x`` or an absolute path would make load read, and persist write
    or delete, outside it."""
    if not is_data_file_name(name):
        raise ValueError(f"{name!r} is not a store file name inside the store directory")
    return name


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _upgrade(raw: dict, path: Path) -> dict:
    """Bring an older manifest to the current format (explicit, version by version)."""
    version = raw.get("format_version")
    if version not in _READABLE:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = " (written by a newer clara-integrations; upgrade it)" if newer else ""
        raise StoreCorruptError(
            f"manifest {path} has format_version {version!r}; this library reads "
            f"{list(_READABLE)}{hint}",
            path,
        )
    # Version 1 is current: nothing to convert. A future v2 adds `if version == 1: ...`.
    return raw
