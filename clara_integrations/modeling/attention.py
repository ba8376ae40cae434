"""SDPA attention that never leaves a query row with nothing to attend to.

CLaRa pads on the left (reference layout, spec §2.1) in training batches and in batched
generation. A left-pad query row is causally limited to keys that the padding mask
removes, so its boolean SDPA mask row is empty. Recent transformers no longer correct
such rows (`sdpa_mask`'s `allow_torch_fix` was retired), and on CUDA some SDPA kernels
return NaN for them; through `0 * NaN` in the next layer's `P @ V`, the NaN then reaches
every row. Seen here: bf16 training of the tiny fixture on an H200 gave a NaN loss with
SDPA and a finite one with eager attention or float32.

transformers has no switch for this, so we register the stock SDPA forward under our own
name with a mask function that lets an empty row attend to every key (what transformers
did before): its output is finite and unused, as padding is masked for every real row
and ignored by the loss. Real rows' masks are unchanged, so results are too.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

__all__ = ["SAFE_SDPA", "sdpa_mask_without_empty_rows", "use_safe_sdpa"]

SAFE_SDPA = "clara_sdpa"


def sdpa_mask_without_empty_rows(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """`transformers.masking_utils.sdpa_mask`, then every all-False query row set to True."""
    mask = sdpa_mask(*args, **kwargs)
    if mask is None or mask.dtype != torch.bool:
        return mask
    return mask | ~mask.any(dim=-1, keepdim=True)


AttentionInterface.register(SAFE_SDPA, sdpa_attention_forward)
AttentionMaskInterface.register(SAFE_SDPA, sdpa_mask_without_empty_rows)


def use_safe_sdpa(decoder: torch.nn.Module) -> None:
    """Switch a transformers model that runs SDPA to the NaN-safe variant (others untouched)."""
    config = getattr(decoder, "config", None)
    if getattr(config, "_attn_implementation", None) == "sdpa":
        decoder.set_attn_implementation(SAFE_SDPA)
