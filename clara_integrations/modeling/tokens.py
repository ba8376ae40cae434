"""Special tokens and tokenizer preparation, exactly as the reference registers them.

The order of the added tokens decides their ids, and the released checkpoints' embedding
matrices have exactly one row per added token, so nothing here may be reordered.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

__all__ = [
    "AE_TOKEN",
    "ENC_TOKEN",
    "SEP_TOKEN",
    "SpecialTokens",
    "prepare_tokenizer",
    "reference_decode",
]

AE_TOKEN = "<AE>"
ENC_TOKEN = "<ENC>"
SEP_TOKEN = "<SEP>"
SHARED_MEM_TOKEN = "<MEM>"


def memory_token_strings(n_mem: int, different_mem_tokens: bool) -> list[str]:
    """Per-document memory-token strings: `<MEM0>..<MEM{n-1}>`, or `<MEM>` repeated."""
    if different_mem_tokens:
        return [f"<MEM{i}>" for i in range(n_mem)]
    return [SHARED_MEM_TOKEN] * n_mem


@dataclass(frozen=True)
class SpecialTokens:
    """Ids and strings of CLaRa's tokens in a prepared tokenizer."""

    mem_tokens: tuple[str, ...]  # one per memory slot of a document (may repeat)
    mem_token_ids: tuple[int, ...]
    ae_id: int
    enc_id: int
    sep_id: int
    bos: str
    eos: str
    pad_id: int

    @property
    def unique_mem_ids(self) -> frozenset[int]:
        return frozenset(self.mem_token_ids)

    @property
    def memory_block(self) -> str:
        """One document's slot in a prompt: its memory tokens followed by `<SEP>`."""
        return "".join(self.mem_tokens) + SEP_TOKEN


def prepare_tokenizer(
    tokenizer: PreTrainedTokenizerBase, n_mem: int, different_mem_tokens: bool
) -> SpecialTokens:
    """Add CLaRa's tokens in the reference order and set left padding.

    Order (reference `_create_decoder_tokenizer`): memory tokens, then `<AE>`, `<ENC>`,
    `<SEP>`; new ids are appended after the base vocabulary. Padding is on the left,
    truncation on the right; a tokenizer without a pad token pads with bos.

    Raises:
        ValueError: the tokenizer has no bos or eos string (the encoder layout needs both).
    """
    if tokenizer.bos_token is None or tokenizer.eos_token is None:
        raise ValueError(
            f"tokenizer of {tokenizer.name_or_path!r} has no bos/eos token; CLaRa's encoder "
            "layout '<ENC>' + bos + text + eos needs both (set them before loading)"
        )
    mem = memory_token_strings(n_mem, different_mem_tokens)
    new_tokens = list(dict.fromkeys(mem)) + [AE_TOKEN, ENC_TOKEN, SEP_TOKEN]
    # `add_tokens(special_tokens=True)` appends unseen strings in list order, which is what
    # the reference's single `add_special_tokens` call does; it works the same way across
    # transformers 4.x and 5.x (5.x no longer exposes `additional_special_tokens`).
    tokenizer.add_tokens(new_tokens, special_tokens=True)
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.bos_token
    convert = tokenizer.convert_tokens_to_ids
    return SpecialTokens(
        mem_tokens=tuple(mem),
        mem_token_ids=tuple(convert(t) for t in mem),
        ae_id=convert(AE_TOKEN),
        enc_id=convert(ENC_TOKEN),
        sep_id=convert(SEP_TOKEN),
        bos=tokenizer.bos_token,
        eos=tokenizer.eos_token,
        pad_id=tokenizer.pad_token_id,
    )


# transformers 4.x (the reference's 4.56.2) applied this clean-up in `decode` whenever
# the tokenizer config sets `clean_up_tokenization_spaces` (SmolLM2's and Mistral's do);
# 5.x skips it for BPE tokenizers. The reference's answers went through it, so we apply
# the same replacements, in the same order, to stay byte-identical.
_CLEANUP_REPLACEMENTS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def reference_decode(tokenizer: PreTrainedTokenizerBase, token_ids) -> list[str]:
    """`batch_decode(skip_special_tokens=True)` plus the 4.x space clean-up when configured."""
    texts = tokenizer.batch_decode(
        token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    if not tokenizer.init_kwargs.get("clean_up_tokenization_spaces", False):
        return texts
    for old, new in _CLEANUP_REPLACEMENTS:
        texts = [t.replace(old, new) for t in texts]
    return texts
