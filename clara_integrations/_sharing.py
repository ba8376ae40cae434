"""Pickling models and stores by reference, never by a silent copy or a swap.

LlamaIndex, LangChain, ``multiprocessing`` and Ray pickle the components a user builds
(a spawned worker, a cached query engine). A `ClaraModel` is hundreds of MB of weights
and a `MemoryStore` owns files and locks, so neither is copied: each pickles as a
*reference*. In the same process the reference resolves to the very same object; in
another process a model is loaded again from the checkpoint folder it came from (its
weights checked against a digest taken when it was pickled), a store is loaded again from
the directory it was persisted to. What cannot be found again - a model built with
`from_base` or changed since it was loaded, a store with unpersisted changes - refuses to
pickle with `NotPicklableError`, which says how to share it. (Nothing in pickle,
cloudpickle or torch does this; `torch.save` of a module would copy every weight.)
"""

from __future__ import annotations

import hashlib
import threading
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

from .errors import NotPicklableError

__all__ = ["ModelOrigin", "model_reduce", "store_reduce", "weights_digest"]

# Live objects by the token they pickle with: a same-process round trip gets them back.
_LIVE: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
# Models loaded again in this process, by (folder, digest): many unpickled components
# share one model instead of loading it once each.
_RELOADED: weakref.WeakValueDictionary[tuple[str, str, str], Any] = weakref.WeakValueDictionary()
_LOADING: dict[tuple[str, str, str], threading.Lock] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelOrigin:
    """Where a model was loaded from and what it held then."""

    folder: str  # the resolved local checkpoint folder
    load_kwargs: dict[str, Any]  # base_model, subfolder-free options; device/dtype as str
    digest: str  # `weights_digest` right after loading


def weights_digest(model: Any) -> str:
    """sha256 of every weight a checkpoint sets: the adapters, the new-token rows and
    any patched base rows (the frozen base comes from `decoder_model_name`)."""
    digest = hashlib.sha256(model.config.decoder_model_name.encode())
    for name in model.adapters.names:
        for key, tensor in sorted(model.adapters.state_dict(name).items()):
            digest.update(f"{name}/{key}".encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    embed = model.decoder.get_input_embeddings().weight
    head = model.decoder.get_output_embeddings()
    tables = {"embed_tokens": embed}
    if head is not None and head.weight.data_ptr() != embed.data_ptr():  # untied head
        tables["lm_head"] = head.weight
    for key, weight in tables.items():  # new-token rows, and base rows a checkpoint patched
        rows = weight[model.base_vocab_size :]
        digest.update(key.encode() + rows.detach().float().cpu().numpy().tobytes())
        ids = model.base_row_patches.get(key)
        if ids is not None:
            digest.update(ids.cpu().numpy().tobytes())
            digest.update(weight[ids.to(weight.device)].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _token(obj: Any) -> str:
    with _LOCK:
        token = getattr(obj, "_share_token", None)
        if token is None:
            token = uuid.uuid4().hex
            object.__setattr__(obj, "_share_token", token)
            _LIVE[token] = obj
        return token


def model_reduce(model: Any) -> tuple[Any, tuple[Any, ...]]:
    """`ClaraModel.__reduce_ex__`: a reference to `model` (see the module docstring).

    Raises:
        NotPicklableError: no checkpoint folder holds these weights.
    """
    origin: ModelOrigin | None = getattr(model, "_origin", None)
    how = (
        "save it with model.save_pretrained(DIR) and build the components with "
        "ClaraModel.from_pretrained(DIR); then they pickle by reference"
    )
    if origin is None:
        raise NotPicklableError(
            "this ClaraModel was not loaded from a checkpoint folder (built with from_base "
            f"or from weights in memory), so another process could not load it again: {how}"
        )
    current = weights_digest(model)
    if current != origin.digest:
        raise NotPicklableError(
            f"this ClaraModel's weights changed since it was loaded from {origin.folder} "
            f"(trained or edited), so loading that folder again would give another model: {how}"
        )
    return _restore_model, (_token(model), origin)


def _restore_model(token: str, origin: ModelOrigin) -> Any:
    live = _LIVE.get(token)
    if live is not None:
        return live
    # The load options are part of the key: the same folder in another dtype or with
    # other config overrides is another model.
    key = (origin.folder, origin.digest, repr(sorted(origin.load_kwargs.items())))
    with _LOCK:
        loading = _LOADING.setdefault(key, threading.Lock())
    with loading:  # threads unpickling the same model at once load it once
        model = _RELOADED.get(key)
        if model is None:
            from .modeling import ClaraModel  # noqa: PLC0415 - the model stack loads on demand

            model = ClaraModel.from_pretrained(origin.folder, **origin.load_kwargs)
            if model._origin.digest != origin.digest:
                raise NotPicklableError(
                    f"the checkpoint folder {origin.folder} changed since the model was "
                    "pickled (its weights differ); pickle the components again"
                )
            _RELOADED[key] = model
    with _LOCK:
        _LIVE[token] = model
        object.__setattr__(model, "_share_token", token)
    return model


def store_reduce(store: Any) -> tuple[Any, tuple[Any, ...]]:
    """`MemoryStore.__reduce_ex__`: a reference to the persisted store.

    Raises:
        NotPicklableError: the store was never persisted or has unpersisted changes.
    """
    if store.path is None or store._st.dirty:
        state = "was never persisted" if store.path is None else "has unpersisted changes"
        raise NotPicklableError(
            f"this MemoryStore {state}, so another process could not open it: call "
            "store.persist(DIR) first; then it (and the components holding it) pickle by "
            "reference and reopen with MemoryStore.load(DIR)"
        )
    from .store.config import RUNTIME_FIELDS  # noqa: PLC0415

    # Runtime settings (`configure`, `load(**runtime)`) may differ from the manifest's
    # (a configure() not persisted yet, or a load() override): carry the handle's own.
    runtime = {name: getattr(store.config, name) for name in RUNTIME_FIELDS}
    return _restore_store, (_token(store), str(store.path), store.config.fingerprint, runtime)


def _restore_store(
    token: str, path: str, fingerprint: str, runtime: dict[str, Any] | None = None
) -> Any:
    live = _LIVE.get(token)
    if live is not None:
        return live
    from .store import MemoryStore  # noqa: PLC0415

    store = MemoryStore.load(path, fingerprint=fingerprint, **(runtime or {}))
    with _LOCK:
        _LIVE[token] = store
        object.__setattr__(store, "_share_token", token)
    return store
