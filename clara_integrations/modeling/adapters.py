"""The three named LoRA adapters on one causal LM, and which one is active.

PEFT injects and serialises the adapters. Activation is done here rather than with
PEFT's `set_adapter`, because that also flips `requires_grad` on every adapter: in a joint
forward (query reasoner -> top-k -> generator) the adapter used first would lose its
gradient. Trainability is set explicitly by the training code instead.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator, Mapping

import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict

from ..errors import ClaraError

__all__ = [
    "ADAPTER_NAMES",
    "DECODER_ADAPTER",
    "ENCODER_ADAPTER",
    "QUERY_ADAPTER",
    "AdapterSet",
    "MissingAdapterError",
    "lora_config",
]

ENCODER_ADAPTER = "encoder_adapter"
DECODER_ADAPTER = "decoder_adapter"
QUERY_ADAPTER = "query_reasoner_adapter"
ADAPTER_NAMES = (ENCODER_ADAPTER, DECODER_ADAPTER, QUERY_ADAPTER)

_WHY_NEEDED = {
    QUERY_ADAPTER: "retrieval needs a query reasoner: use an end-to-end (stage2) checkpoint",
    ENCODER_ADAPTER: "compression needs the compressor adapter",
    DECODER_ADAPTER: "generation needs the generator adapter",
}

# Keys PEFT may add to an exported adapter when the vocabulary was resized (spec §6.1).
EMBEDDING_KEYS = ("model.embed_tokens.weight", "lm_head.weight")


class MissingAdapterError(ClaraError, ValueError):
    """The checkpoint lacks the adapter an operation needs (e.g. retrieval without
    `query_reasoner_adapter`)."""


def lora_config(rank: int) -> LoraConfig:
    """Reference LoRA settings: alpha = 2r, dropout 0.1, all linear layers but lm_head."""
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.1,
        target_modules="all-linear",
        bias="none",
    )


class AdapterSet:
    """Named LoRA adapters living inside `model` (a transformers causal LM).

    The one owner of PEFT's adapter state: which adapter is active, creating, loading,
    re-initialising and freezing adapters. Nothing else touches LoRA layers.

    Example:
        >>> adapters = model.adapters                       # a ClaraModel's AdapterSet
        >>> with adapters.using("encoder_adapter"):
        ...     adapters.active
        'encoder_adapter'
        >>> adapters.active is None                         # afterwards: the plain base
        True
    """

    def __init__(self, model: torch.nn.Module, rank: int) -> None:
        self.model = model
        self.rank = rank
        self.names: list[str] = []  # insertion order = save order, as the reference
        # LoRA layers, found once per `add`: walking every module on each switch cost
        # ~4 ms per activation, which showed in time to first token.
        self._lora_layers: list[BaseTunerLayer] = []
        self._active: str | None = None
        # The active adapter is model-wide state: one forward at a time may choose it.
        self._lock = threading.RLock()

    def __getstate__(self) -> dict:
        # Locks cannot be copied or pickled; a copy gets its own (copy.deepcopy(model) works).
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def add(self, name: str, state_dict: Mapping[str, torch.Tensor] | None = None) -> None:
        """Create adapter `name` (fresh: an exact no-op, B = 0) and optionally load weights."""
        if name in self.names:
            raise ValueError(f"adapter {name!r} already exists")
        with warnings.catch_warnings():
            # PEFT warns that a second adapter joins the first: that is the design here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(lora_config(self.rank), self.model, adapter_name=name)
        self.names.append(name)
        self._lora_layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        if state_dict is not None:
            self.load(name, state_dict)
        self.activate(None)

    def load(self, name: str, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load exported weights (keys without adapter name) into adapter `name`.

        Raises:
            ValueError: a LoRA key of the file does not exist in the model, or a LoRA weight
                of the model is missing from the file (wrong base model or rank).
        """
        lora = {k: v for k, v in state_dict.items() if k not in EMBEDDING_KEYS}
        result = set_peft_model_state_dict(self.model, lora, adapter_name=name)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        missing = [
            k
            for k in (getattr(result, "missing_keys", []) or [])
            if f".{name}." in k and "lora_" in k
        ]
        if unexpected or missing:
            raise ValueError(
                f"adapter {name!r} does not fit this base model: "
                f"{len(unexpected)} unexpected keys (e.g. {unexpected[:2]}), "
                f"{len(missing)} missing (e.g. {missing[:2]})"
            )

    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Exported weights of `name`, keys without adapter name (reference layout)."""
        self.require(name)
        sd = get_peft_model_state_dict(self.model, adapter_name=name, save_embedding_layers=False)
        return {k: v.detach().cpu().contiguous() for k, v in sd.items()}

    def copy(self, source: str, target: str) -> None:
        """Add `target` as an exact copy of `source` (reference: query reasoner from encoder)."""
        self.add(target, self.state_dict(source))

    def require(self, name: str) -> None:
        """Raise :class:`MissingAdapterError` (saying what the adapter is for) unless
        adapter `name` exists."""
        if name not in self.names:
            raise MissingAdapterError(
                f"this CLaRa model has no {name!r} adapter (present: {self.names}); "
                + _WHY_NEEDED.get(name, "")
            )

    def activate(self, name: str | None) -> None:
        """Make exactly `name` active (None: the plain base model). Grad flags untouched."""
        if name is not None:
            self.require(name)
        active = [] if name is None else [name]
        for layer in self._lora_layers:
            # Private attribute on purpose: see the module docstring.
            layer._active_adapter = active
        self._active = name

    @property
    def active(self) -> str | None:
        """The active adapter (None: the plain base model)."""
        return self._active

    def reset(self, name: str) -> None:
        """Re-initialise adapter `name` as it was created (B = 0: an exact no-op)."""
        self.require(name)
        for layer in self._lora_layers:
            if name in getattr(layer, "lora_A", {}):
                layer.reset_lora_parameters(name, init_lora_weights=True)

    @contextlib.contextmanager
    def using(self, name: str | None) -> Iterator[None]:
        """Activate `name` for the block (other threads wait); afterwards none is active."""
        with self._lock:
            self.activate(name)
            try:
                yield
            finally:
                self.activate(None)

    def parameters(self, name: str) -> list[torch.nn.Parameter]:
        """The LoRA parameters of adapter `name` (for optimisers and freezing)."""
        self.require(name)
        return [p for n, p in self.model.named_parameters() if f".{name}." in n and "lora_" in n]

    def set_trainable(self, names: list[str]) -> None:
        """requires_grad on exactly these adapters' LoRA weights; every other adapter frozen."""
        for adapter in self.names:
            flag = adapter in names
            for p in self.parameters(adapter):
                p.requires_grad_(flag)

    @contextlib.contextmanager
    def dropout_replaced(self, factory) -> Iterator[int]:
        """For the block, every adapter's LoRA dropout (`nn.Dropout`, p > 0) replaced by
        `factory(p)` (training uses a faster mask generator on CPUs); yields how many.

        Example:
            >>> import torch
            >>> with model.adapters.dropout_replaced(torch.nn.Dropout) as n:
            ...     n > 0
            True
        """
        swapped = []
        for layer in self._lora_layers:
            holder = getattr(layer, "lora_dropout", None)
            for name, drop in list(holder.items()) if holder is not None else ():
                if isinstance(drop, torch.nn.Dropout) and drop.p > 0:
                    new = factory(drop.p)
                    new.train(drop.training)
                    holder[name] = new
                    swapped.append((holder, name, drop))
        try:
            yield len(swapped)
        finally:
            for holder, name, drop in swapped:
                drop.train(holder[name].training)
                holder[name] = drop
