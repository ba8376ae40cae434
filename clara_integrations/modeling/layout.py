"""Input layouts: encoder/query rows and the splicing of memory into decoder inputs.

Reference quirks reproduced here (spec §2.1, §3.1, §4.6):
* encoder string `'<ENC>' + bos + text + eos`, tokenized once, right-truncated to
  `doc_max_length + 3` tokens (a long text loses its eos);
* the reference left-pads every row to `doc_max_length + 3`, appends the memory tokens
  after the padding and uses positions `0..T-1` over the padded row. We pad only to the
  longest row of a length-sorted batch and pass explicit position ids that reproduce the
  reference positions, so the numbers match while the cost follows real lengths;
* memory is spliced at the first memory token, slot `j` at `first + j * (n_mem + sep)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from .tokens import ENC_TOKEN, SpecialTokens

__all__ = ["EncoderBatch", "encoder_token_ids", "pack_encoder_batch", "splice_memory"]

# The reference pads encoder rows to doc_max_length + 3: room for <ENC>, bos and eos.
ENCODER_EXTRA_TOKENS = 3


def validate_texts(texts: Sequence[str], what: str = "document") -> list[str]:
    """Every entry must be a non-empty string; raise ValueError naming the first bad index."""
    if isinstance(texts, str):
        raise TypeError(f"expected a list of {what}s, got a single string")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise ValueError(f"{what} {i} is {type(text).__name__}, expected a string")
        if not text.strip():
            raise ValueError(f"{what} {i} is empty")
    return out


def encoder_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    special: SpecialTokens,
    texts: Sequence[str],
    max_length: int,
) -> list[list[int]]:
    """Token ids of `'<ENC>' + bos + text + eos`, truncated to `max_length + 3` tokens.

    The whole string goes through the tokenizer at once, as in the reference: special-token
    splitting and leading-space handling of the text depend on it.
    """
    strings = [ENC_TOKEN + special.bos + text + special.eos for text in texts]
    encoded = tokenizer(
        strings,
        add_special_tokens=False,
        truncation=True,
        max_length=max_length + ENCODER_EXTRA_TOKENS,
        padding=False,
    )
    return encoded["input_ids"]


@dataclass
class EncoderBatch:
    """One forward's worth of encoder rows. Memory tokens are the last `n_mem` columns."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)


def pack_encoder_batch(
    rows: Sequence[Sequence[int]],
    special: SpecialTokens,
    max_length: int,
    reference_padding: bool = False,
) -> EncoderBatch:
    """Left-pad `rows`, append memory tokens, and give the reference's positions.

    With `reference_padding` every row is padded to `max_length + 3` exactly like the
    reference (used to measure what the padding costs); otherwise rows are padded only to
    the longest row, and the position ids are shifted by the padding the reference would
    have added, which reproduces its positions for every real and memory token.
    """
    n_mem = len(special.mem_token_ids)
    text_len = max_length + ENCODER_EXTRA_TOKENS
    width = text_len if reference_padding else max(len(r) for r in rows)
    ids = torch.full((len(rows), width + n_mem), special.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width + n_mem), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) : width] = torch.as_tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    ids[:, width:] = torch.as_tensor(special.mem_token_ids, dtype=torch.long)
    # Reference position of column c of our row = c + (text_len - width).
    positions = torch.arange(width + n_mem, dtype=torch.long) + (text_len - width)
    return EncoderBatch(ids, mask, positions.unsqueeze(0).expand(len(rows), -1))


def memory_mse(
    hidden: torch.Tensor, attention_mask: torch.Tensor, n_mem: int, reduction: str = "mean"
) -> torch.Tensor:
    """Reference MSE auxiliary loss: mean memory state vs mean attended non-memory state.

    Args:
        hidden: (B, T, H) final hidden states; the last n_mem columns are memory tokens.
        attention_mask: (B, T).
        reduction: "mean" (the reference's scalar) or "none" (one value per row, (B,);
            their mean is the scalar, as every row has H elements).
    """
    mem_mask = torch.zeros_like(attention_mask, dtype=torch.bool)
    mem_mask[:, -n_mem:] = True
    attended = attention_mask.bool()
    non_mem = attended & ~mem_mask
    mem_mask = mem_mask & attended
    if (non_mem.sum(1) == 0).any() or (mem_mask.sum(1) == 0).any():
        raise ValueError("every encoder row needs memory and non-memory tokens")
    w_mem = mem_mask.to(hidden.dtype).unsqueeze(-1)
    w_non = non_mem.to(hidden.dtype).unsqueeze(-1)
    mem_mean = (hidden * w_mem).sum(1) / mem_mask.sum(1, keepdim=True).to(hidden.dtype)
    non_mean = (hidden * w_non).sum(1) / non_mem.sum(1, keepdim=True).to(hidden.dtype)
    if reduction == "none":
        return (non_mean - mem_mean).pow(2).mean(dim=-1)  # (B,)
    return torch.nn.functional.mse_loss(non_mean, mem_mean)


def splice_memory(
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    memories: torch.Tensor,
    first_mem_id: int,
    k: int,
    sep: bool,
) -> torch.Tensor:
    """Write `k` documents' memory into each row, reference arithmetic (out of place).

    Args:
        inputs_embeds: (B, T, H) token embeddings of the decoder prompt.
        input_ids: (B, T) prompt ids.
        memories: (B * k, n_mem, H), example-major, rank order within an example.
        first_mem_id: id of `<MEM0>` (or `<MEM>`): slots are anchored at its first occurrence.
        k: documents per row.
        sep: slot length is `n_mem + 1` when True, else `n_mem` (reference quirk: with
            `sep=False` and k > 1 later documents overwrite `<SEP>` and memory positions
            of earlier slots; checkpoints trained that way depend on it).

    Returns:
        (B, T, H) embeddings; gradients flow into `memories`.
    """
    batch, seq_len, hidden = inputs_embeds.shape
    n_mem = memories.shape[1]
    if memories.shape[0] != batch * k or memories.shape[2] != hidden:
        raise ValueError(
            f"memories must be ({batch} * {k}, n_mem, {hidden}), got {tuple(memories.shape)}"
        )
    is_mem = input_ids == first_mem_id
    if not is_mem.any(dim=1).all():
        raise ValueError("a decoder prompt lost its memory tokens (prompt truncated?)")
    first = is_mem.int().argmax(dim=1)  # (B,)
    slot_len = n_mem + 1 if sep else n_mem
    offsets = torch.arange(k, device=first.device) * slot_len  # (k,)
    cols = first[:, None, None] + offsets[None, :, None] + torch.arange(n_mem, device=first.device)
    if int(cols.max()) >= seq_len:
        raise ValueError("memory slots run past the end of the decoder prompt")
    rows = torch.arange(batch, device=first.device)[:, None, None].expand_as(cols)
    values = memories.reshape(batch, k, n_mem, hidden).to(inputs_embeds.dtype)
    return inputs_embeds.index_put((rows, cols), values)
