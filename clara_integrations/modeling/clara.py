"""`ClaraModel`: compress documents, encode queries, select, and generate from memory.

One causal LM carries three LoRA adapters (compressor, query reasoner, generator); each
sub-forward runs with exactly one of them active. Method names follow the reference
(`compress_documents`, `generate_from_questions`, ...) so its users feel at home, but
inference always runs in eval mode, under `no_grad`, on any device and dtype, and never
mutates the model (`generation_top_k` is a per-call argument, not hidden state).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import numbers
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .._sharing import ModelOrigin, model_reduce, weights_digest
from ..config import ClaraConfig
from ..errors import DocumentTruncatedWarning
from . import prompts
from .adapters import DECODER_ADAPTER, ENCODER_ADAPTER, QUERY_ADAPTER, AdapterSet
from .attention import use_safe_sdpa
from .checkpoint import (
    CheckpointCorruptError,
    CheckpointFiles,
    read_checkpoint,
    write_native,
    write_released,
)
from .hub import DEFAULT_BASE_MODEL, resolve_base_model, resolve_checkpoint
from .layout import (
    ENCODER_EXTRA_TOKENS,
    encoder_token_ids,
    memory_mse,
    pack_encoder_batch,
    splice_memory,
    validate_texts,
)
from .loading import apply_checkpoint, default_device, default_dtype
from .tokens import SpecialTokens, prepare_tokenizer, reference_decode
from .topk import cosine_scores, differentiable_topk

__all__ = ["ClaraModel"]

logger = logging.getLogger(__name__)

# Reference inference helpers tokenize decoder prompts with this cap (spec §4.5).
DECODER_MAX_LENGTH = 1024
# Reference temperature of the top-k selector over supplied candidates (spec §3.3).
SELECT_TEMPERATURE = 0.02


def _load_base_lm(base_path: str, dtype: torch.dtype) -> PreTrainedModel:
    """The base causal LM, never running (or asking on stdin about) the folder's own code."""
    # trust_remote_code=False: left unset, a config.json with `auto_map` makes transformers
    # ask "run custom code? [y/N]" whenever it lacks the architecture, blocking a script.
    try:
        return AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, trust_remote_code=False)
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise ValueError(
            f"base model {base_path} needs its own Python code (`auto_map` in config.json, with a "
            "model_type transformers does not know); CLaRa never runs a model folder's code: use "
            "a base model whose architecture transformers supports natively"
        ) from None


class ClaraModel(torch.nn.Module):
    """A CLaRa model: one base LM, compressor / query-reasoner / generator adapters.

    Build it with `from_pretrained` (our format or the released one) or `from_base`
    (fresh adapters, for training).

    Example:
        >>> model = ClaraModel.from_pretrained("path/to/ckpt", base_model="path/to/base")  # doctest: +SKIP
        >>> mem = model.compress_documents(["Paris is the capital of France."])
        >>> tuple(mem.shape) == (1, model.n_mem, model.hidden_size)
        True
        >>> answers, idx = model.generate_from_questions(
        ...     ["Capital of France?"], documents=[["Paris is the capital of France.", "Rome."]],
        ...     k=1, max_new_tokens=4)
        >>> len(answers), tuple(idx.shape)
        (1, (1, 1))
    """

    def __init__(
        self,
        decoder: PreTrainedModel,
        tokenizer: Any,
        config: ClaraConfig,
        adapters: AdapterSet,
        special: SpecialTokens,
        base_vocab_size: int,
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.config = config
        self.adapters = adapters
        self.special = special
        self.base_vocab_size = base_vocab_size
        self._identity: str | None = None
        self._warned_truncation = False  # see _warn_truncation
        # Base-vocabulary rows a loaded checkpoint changed: {"embed_tokens"|"lm_head": ids}.
        self.base_row_patches: dict[str, torch.Tensor] = {}
        self.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def _build(
        cls,
        config: ClaraConfig,
        base_path: str,
        *,
        device: Any,
        dtype: Any,
        round_base_to_bf16: bool,
        fresh_rows: bool = True,
    ) -> ClaraModel:
        device = torch.device(device) if device is not None else default_device()
        dtype = dtype or default_dtype(device)
        # The reference always runs its base LM in bfloat16, so released adapters were
        # trained against bf16-rounded base weights: reproduce that rounding on request.
        load_dtype = torch.bfloat16 if round_base_to_bf16 else dtype
        decoder = _load_base_lm(base_path, load_dtype).to(dtype=dtype)
        use_safe_sdpa(decoder)  # left padding must not give NaN on CUDA (see attention.py)
        tokenizer = AutoTokenizer.from_pretrained(base_path, use_fast=True, trust_remote_code=False)
        base_vocab = len(tokenizer)
        special = prepare_tokenizer(tokenizer, config.n_mem, config.different_mem_tokens)
        # Fresh models initialise the new rows as the reference does (transformers' mean
        # resizing); a loaded checkpoint overwrites them, so skip that (slow) statistic.
        decoder.resize_token_embeddings(len(tokenizer), mean_resizing=fresh_rows)
        gen = decoder.generation_config
        gen.top_p, gen.temperature, gen.top_k = None, None, None
        gen.pad_token_id = tokenizer.pad_token_id
        adapters = AdapterSet(decoder, rank=config.lora_r)
        model = cls(decoder, tokenizer, config, adapters, special, base_vocab)
        return model.to(device)

    @classmethod
    def from_base(
        cls,
        base_model: str | os.PathLike[str] = DEFAULT_BASE_MODEL,
        config: ClaraConfig | None = None,
        *,
        adapters: Sequence[str] | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        allow_network: bool | None = None,
    ) -> ClaraModel:
        """A fresh CLaRa on `base_model` for training.

        Args:
            base_model: local folder, hub id (network opt-in) or the embedded default.
            config: defaults to the reference training CLI's config (`ClaraConfig.for_training`).
            adapters: adapters to create; default per `config.training_stage` as the
                reference (stage1: generator + compressor; stage2: generator + query reasoner;
                stage1_2: compressor + generator). Fresh adapters are exact no-ops.

        Example:
            >>> model = ClaraModel.from_base(adapters=["encoder_adapter", "decoder_adapter"])  # doctest: +SKIP
        """
        config = (config or ClaraConfig.for_training(str(base_model))).model_copy(
            update={"decoder_model_name": str(base_model)}
        )
        path = resolve_base_model(base_model, allow_network=allow_network)
        model = cls._build(config, path, device=device, dtype=dtype, round_base_to_bf16=False)
        default = {
            "stage1": [DECODER_ADAPTER, ENCODER_ADAPTER],
            "stage2": [DECODER_ADAPTER, QUERY_ADAPTER],
            "stage1_2": [ENCODER_ADAPTER, DECODER_ADAPTER],
        }.get(config.training_stage, [ENCODER_ADAPTER, DECODER_ADAPTER, QUERY_ADAPTER])
        for name in adapters if adapters is not None else default:
            model.adapters.add(name)
        model.to(model.device)
        return model

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike[str] | None = None,
        *,
        base_model: str | os.PathLike[str] | None = None,
        subfolder: str | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        adapter_policy: str = "reference",
        allow_network: bool | None = None,
        **config_overrides: Any,
    ) -> ClaraModel:
        """Load a CLaRa checkpoint, native or released format.

        Args:
            path_or_id: checkpoint folder or hub repo id; None loads the checkpoint shipped
                with the package.
            base_model: overrides the config's `decoder_model_name` (released configs name
                the authors' cluster path or `mistralai/Mistral-7B-Instruct-v0.2`).
            subfolder: e.g. `"compression-16"` in the released hub repos.
            device, dtype: where and in what precision to run (default: CUDA/MPS if
                available, float32 on CPU/MPS and bfloat16 on CUDA).
            adapter_policy: `"reference"` applies the reference loader's per-stage rules
                (an Instruct `stage1_2` checkpoint then runs with a fresh generator);
                `"all"` loads every adapter in the file (the reference's evaluation mode).
            config_overrides: config keys to overwrite, e.g. `generation_top_k=3`.

        Raises:
            FileNotFoundError: checkpoint or base model not found (network is opt-in).
            CheckpointCorruptError: a checkpoint file is missing, truncated or malformed
                (the message names the file).

        Example:
            >>> model = ClaraModel.from_pretrained("ckpt-e2e", base_model="tiny-llama-base")  # doctest: +SKIP
        """
        if path_or_id is None:
            from .assets import default_checkpoint_dir  # noqa: PLC0415 - avoid a cycle

            path_or_id = default_checkpoint_dir()
        folder = resolve_checkpoint(path_or_id, subfolder, allow_network=allow_network)
        files = read_checkpoint(folder)
        config = files.config
        if config_overrides:
            unknown = [k for k in config_overrides if k not in ClaraConfig.model_fields]
            if unknown:
                raise ValueError(f"unknown config keys {unknown}")
            config = config.model_copy(update=config_overrides)
        base_name = str(base_model) if base_model is not None else config.decoder_model_name
        config = config.model_copy(update={"decoder_model_name": base_name})
        base_path = resolve_base_model(
            base_name, search_dirs=(folder, folder.parent), allow_network=allow_network
        )
        model = cls._build(
            config,
            base_path,
            device=device,
            dtype=dtype,
            round_base_to_bf16=_rounds_base(files),
            fresh_rows=False,
        )
        apply_checkpoint(model, files, adapter_policy)
        model.to(model.device)
        load_kwargs = {"adapter_policy": adapter_policy, "dtype": model.dtype, **config_overrides}
        if base_model is not None:
            load_kwargs["base_model"] = str(base_model)
        if device is not None:
            load_kwargs["device"] = str(model.device)
        # Pickling refers to this folder instead of copying weights (see _sharing.py).
        model._origin = ModelOrigin(str(folder), load_kwargs, weights_digest(model))
        return model

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[Any, ...]]:
        """Pickle by reference: the same model in this process, the checkpoint folder it
        was loaded from in another (`NotPicklableError` if there is none)."""
        return model_reduce(self)

    def __copy__(self) -> ClaraModel:
        # A shallow copy, as before pickling went by reference (copy uses __reduce_ex__).
        new = type(self).__new__(type(self))
        state = dict(self.__dict__)
        state.pop("_share_token", None)
        new.__setstate__(state)
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> ClaraModel:
        # A real copy (pickling goes by reference, copying must not): nn.Module's default.
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        state = copy.deepcopy(self.__dict__, memo)
        state.pop("_share_token", None)  # the copy is another object
        new.__setstate__(state)
        return new

    # ------------------------------------------------------------------ properties
    @property
    def n_mem(self) -> int:
        """Memory vectors per document."""
        return self.config.n_mem

    @property
    def hidden_size(self) -> int:
        """Width of one memory vector (the base LM's hidden size)."""
        return int(self.decoder.get_input_embeddings().weight.shape[1])

    @property
    def compression_rate(self) -> int:
        """Document tokens per memory vector."""
        return self.config.compr_rate

    @property
    def device(self) -> torch.device:
        return self.decoder.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.get_input_embeddings().weight.dtype

    @property
    def model_identity(self) -> str:
        """Stable id of the compressor (encoder adapter + new-token rows + base name and
        shape): stores refuse memory from another compressor."""
        if self._identity is None:
            digest = hashlib.sha256()
            digest.update(
                f"{Path(self.config.decoder_model_name).name}|{self.hidden_size}|"
                f"{self.n_mem}|{self.config.doc_max_length}".encode()
            )
            tensors = (
                dict(self.adapters.state_dict(ENCODER_ADAPTER))
                if ENCODER_ADAPTER in self.adapters
                else {}
            )
            tensors["rows"] = self.decoder.get_input_embeddings().weight[self.base_vocab_size :]
            for key in sorted(tensors):
                digest.update(key.encode())
                digest.update(tensors[key].detach().float().cpu().numpy().tobytes())
            self._identity = f"clara-{digest.hexdigest()[:16]}"
        return self._identity

    def train(self, mode: bool = True) -> ClaraModel:
        if mode:
            self._identity = None  # weights may change while training
        return super().train(mode)

    # ------------------------------------------------------------------ encoders
    def encode_texts(
        self,
        texts: Sequence[str],
        adapter: str,
        batch_size: int = 16,
        show_progress: bool | None = False,
        desc: str = "encoding",
        with_mse: bool | str = False,
        reference_padding: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run texts through the encoder layout with `adapter` (`"encoder_adapter"` or
        `"query_reasoner_adapter"`): ((B, n_mem, H), reference MSE term or None).
        `with_mse="rows"` gives each text's MSE term instead, (B,) in input order (the
        reference term is their mean; training uses it to weight repeated texts).

        Rows are sorted by length and padded per batch only; explicit position ids keep
        the reference's positions. Gradients flow when called under grad mode (training);
        inference callers use `compress_documents` / `encode_queries`.
        """
        self.adapters.require(adapter)
        rows = encoder_token_ids(self.tokenizer, self.special, texts, self.config.doc_max_length)
        if adapter == ENCODER_ADAPTER:
            self._warn_truncation(texts, rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
        out = [None] * len(rows)
        mse_parts = []
        base = getattr(self.decoder, self.decoder.base_model_prefix)
        if show_progress is None:
            show_progress = len(rows) > 4 * batch_size
        with self.adapters.using(adapter):
            for start in tqdm(
                range(0, len(order), batch_size), desc=desc, disable=not show_progress, unit="batch"
            ):
                idx = order[start : start + batch_size]
                batch = pack_encoder_batch(
                    [rows[i] for i in idx],
                    self.special,
                    self.config.doc_max_length,
                    reference_padding,
                )
                hidden = base(
                    input_ids=batch.input_ids.to(self.device),
                    attention_mask=batch.attention_mask.to(self.device),
                    position_ids=batch.position_ids.to(self.device),
                ).last_hidden_state  # (b, T, H), post final norm = reference hidden_states[-1]
                if with_mse == "rows":
                    mse_parts.append(
                        (
                            memory_mse(
                                hidden,
                                batch.attention_mask.to(self.device),
                                self.n_mem,
                                reduction="none",
                            ),
                            idx,
                        )
                    )
                elif with_mse:
                    mse_parts.append(
                        (
                            memory_mse(hidden, batch.attention_mask.to(self.device), self.n_mem),
                            len(idx),
                        )
                    )
                for row, i in zip(hidden[:, -self.n_mem :, :], idx):
                    out[i] = row
        memory = torch.stack(out)
        if not with_mse:
            return memory, None
        if with_mse == "rows":
            per_row = torch.cat([m for m, _ in mse_parts])  # (B,) in sorted order
            where = torch.as_tensor([i for _, idx in mse_parts for i in idx], device=per_row.device)
            return memory, per_row[torch.argsort(where)]
        # Reference computes one MSE over the whole batch: a size-weighted mean of ours.
        mse = sum(m * n for m, n in mse_parts) / len(rows)
        return memory, mse

    def _empty_memory(self) -> torch.Tensor:
        return torch.empty(0, self.n_mem, self.hidden_size, device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def compress_documents(
        self,
        texts: Sequence[str],
        batch_size: int = 16,
        show_progress: bool | None = None,
        reference_padding: bool = False,
    ) -> torch.Tensor:
        """Compress documents into memory vectors with the compressor adapter.

        Args:
            texts: documents; longer than `doc_max_length` tokens are truncated as the
                reference does (the first `doc_max_length + 1` text tokens are kept).
            batch_size: documents per forward.
            show_progress: tqdm bar (default: only for many batches).
            reference_padding: pad every row to `doc_max_length + 3` like the reference
                (same vectors, slower; for benchmarks).

        Returns:
            Tensor (N, n_mem, H) in the model's dtype, on its device.

        Raises:
            ValueError: an entry is empty or not a string (the message gives its index).

        Example:
            >>> memory = model.compress_documents(["Weldenia is a genus of plants."])
            >>> memory.shape[0], memory.dtype == model.dtype
            (1, True)
        """
        texts = validate_texts(texts)
        if not texts:
            return self._empty_memory()
        self.eval()
        memory, _ = self.encode_texts(
            texts,
            ENCODER_ADAPTER,
            batch_size,
            show_progress,
            "compressing",
            reference_padding=reference_padding,
        )
        return memory

    @property
    def max_document_tokens(self) -> int:
        """Text tokens of a document the compressor reads (`doc_max_length` + 1, as the
        reference); the rest is cut. Size chunks with it (`clara_node_parser`,
        `clara_text_splitter`)."""
        return self.config.doc_max_length + 1

    def _warn_truncation(self, texts: Sequence[str], rows: Sequence[Sequence[int]]) -> None:
        """Warn (once per model) when documents are longer than the compressor reads:
        cutting them silently would make answers worse with no sign of why. Only rows
        that reached the length cap can have been cut, so only those are tokenized again
        (in full, to count what was lost)."""
        if self._warned_truncation:
            return
        cap = self.config.doc_max_length + ENCODER_EXTRA_TOKENS
        at_cap = [texts[i] for i, row in enumerate(rows) if len(row) >= cap]
        if at_cap:
            self._warn_if_cut(len(texts), at_cap, stacklevel=6)

    def warn_if_truncated(self, texts: Sequence[str]) -> None:
        """The truncation warning `encode_texts` gives, for documents whose memory was
        made earlier (e.g. loaded from a training memory cache): a reused memory is as
        cut as when it was made, and the user must hear it again."""
        if not self._warned_truncation and texts:
            self._warn_if_cut(len(texts), list(texts), stacklevel=3)

    def _warn_if_cut(self, total: int, candidates: list[str], stacklevel: int) -> None:
        limit = self.max_document_tokens
        lengths = [
            len(ids) for ids in self.tokenizer(candidates, add_special_tokens=False)["input_ids"]
        ]
        over = [n for n in lengths if n > limit]
        if not over:
            return
        self._warned_truncation = True
        lost = sum(n - limit for n in over)
        warnings.warn(
            f"{len(over)} of {total} documents are longer than the {limit} tokens the "
            f"compressor reads (doc_max_length {self.config.doc_max_length}; longest "
            f"{max(over)} tokens): {lost} of their {sum(over)} tokens ({lost / sum(over):.0%}) "
            "are cut and not in their memory. Split documents into chunks of at most "
            f"{self.config.doc_max_length} tokens first: LlamaIndex "
            "`Settings.transformations = [clara_node_parser(model)]`, LangChain "
            "`clara_text_splitter(model).split_documents(docs)`. (Shown once per model.)",
            DocumentTruncatedWarning,
            stacklevel=stacklevel,  # encode_texts: past compress_documents and its no_grad
        )

    @torch.no_grad()
    def encode_queries(
        self, texts: Sequence[str], batch_size: int = 16, show_progress: bool | None = None
    ) -> torch.Tensor:
        """Query vectors (B, n_mem * H) from the query reasoner, comparable by cosine with
        flattened document memory.

        Raises:
            MissingAdapterError: the checkpoint has no `query_reasoner_adapter`.
            ValueError: an empty or non-string question (naming its index).
        """
        texts = validate_texts(texts, "question")
        if not texts:
            return torch.empty(
                0, self.n_mem * self.hidden_size, device=self.device, dtype=self.dtype
            )
        self.eval()
        memory, _ = self.encode_texts(texts, QUERY_ADAPTER, batch_size, show_progress, "queries")
        return memory.flatten(1)

    # ------------------------------------------------------------------ selection
    def select(
        self,
        query_vectors: torch.Tensor,
        candidates: torch.Tensor,
        k: int,
        temperature: float = SELECT_TEMPERATURE,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pick `k` of `N` candidate memories per query with the differentiable top-k.

        Args:
            query_vectors: (B, n_mem * H).
            candidates: (B, N, n_mem, H) candidate document memories.
            k: documents to keep, k <= N.

        Returns:
            (selected (B * k, n_mem, H) in rank order, topk_idx (B, k), scores (B, N)).
            In grad mode the selection passes the straight-through gradient to the query.
        """
        if candidates.dim() != 4 or query_vectors.dim() != 2:
            raise ValueError("expected query_vectors (B, D) and candidates (B, N, n_mem, H)")
        b, n, n_mem, hidden = candidates.shape
        if query_vectors.shape != (b, n_mem * hidden):
            raise ValueError(
                f"query_vectors {tuple(query_vectors.shape)} do not match candidates "
                f"{tuple(candidates.shape)} (expected ({b}, {n_mem * hidden}))"
            )
        flat = candidates.reshape(b, n, n_mem * hidden)
        scores = cosine_scores(query_vectors, flat)
        weights, topk_idx = differentiable_topk(scores, k, temperature)
        with torch.autocast(flat.device.type, enabled=False):  # exact rows, also in training
            selected = torch.einsum("bkn,bnd->bkd", weights.to(flat.dtype), flat)
        return selected.reshape(b * k, n_mem, hidden), topk_idx, scores

    # ------------------------------------------------------------------ generation
    def _answer_prompts(self, questions: Sequence[str], k: int) -> list[str]:
        return [
            prompts.answer_prompt(self.tokenizer, self.special.memory_block, k, q)[0]
            for q in questions
        ]

    def build_decoder_inputs(
        self,
        prompt_texts: Sequence[str],
        memories: torch.Tensor,
        k: int,
        max_length: int = DECODER_MAX_LENGTH,
        truncate: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Tokenize rendered prompts (left padding, right truncation at `max_length`) and
        splice `memories` (B * k, n_mem, H) into their memory slots. Differentiable in
        `memories`; used by generation and by training (prompts with answers).

        With ``truncate=False`` (prompts to answer) a prompt longer than `max_length` is
        refused instead: the cut would fall on the question and the assistant turn, and
        the model would answer half a question.

        Raises:
            ValueError: ``truncate=False`` and a prompt is longer than `max_length`.
        """
        enc = self.tokenizer(
            list(prompt_texts),
            add_special_tokens=False,
            padding="longest",
            truncation=truncate,
            max_length=max_length if truncate else None,
            return_tensors="pt",
        )
        if not truncate:
            self._refuse_overlong(enc["attention_mask"].sum(dim=1).tolist(), k, max_length)
        input_ids = enc["input_ids"].to(self.device)
        attention_mask = enc["attention_mask"].to(self.device)
        embeds = self.decoder.get_input_embeddings()(input_ids)
        embeds = splice_memory(
            embeds,
            input_ids,
            memories.to(self.device),
            self.special.mem_token_ids[0],
            k,
            self.config.sep,
        )
        return {"input_ids": input_ids, "inputs_embeds": embeds, "attention_mask": attention_mask}

    def _refuse_overlong(self, lengths: Sequence[int], k: int, max_length: int) -> None:
        for i, n in enumerate(lengths):
            if n > max_length:
                slot = self.n_mem + 1  # memory tokens and <SEP>
                raise ValueError(
                    f"prompt {i} is {n} tokens ({k} documents x {slot} memory-slot tokens = "
                    f"{k * slot}, the rest question and template), above the {max_length} "
                    "tokens the generator reads (the reference's cap); its end, with the "
                    "question, would be cut: pass fewer documents (similarity_top_k / k) or "
                    "a shorter question"
                )

    def _generation_inputs(
        self, prompt_texts: Sequence[str], memories: torch.Tensor, k: int
    ) -> dict[str, torch.Tensor]:
        """Decoder inputs of prompts to answer: never truncated (see `build_decoder_inputs`)."""
        return self.build_decoder_inputs(prompt_texts, memories, k, truncate=False)

    def prepare_generation_inputs(
        self, questions: Sequence[str], memories: torch.Tensor, k: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Decoder inputs with memory spliced in, for users who decode elsewhere.

        Args:
            questions: B questions.
            memories: (B * k, n_mem, H) or (B, k, n_mem, H) document memories, rank order.
            k: documents per question (default: inferred from `memories`).

        Returns:
            {"input_ids", "inputs_embeds", "attention_mask"} ((B, T), (B, T, H), (B, T));
            run the decoder with `model.generator_active()` for the generator adapter.
        """
        questions = validate_texts(questions, "question")
        memories, k = self._check_memories(questions, memories, k)
        return self._generation_inputs(self._answer_prompts(questions, k), memories, k)

    def _top_k(self, k: Any) -> int:
        # `k or default` would turn k=0 into the config's k; only None means "default".
        if k is None:
            return self.config.generation_top_k
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(
                f"k must be a positive int (documents to read per question) or None for "
                f"the config's generation_top_k ({self.config.generation_top_k}); got {k!r}"
            )
        return int(k)

    def _check_memories(
        self, questions: Sequence[str], memories: torch.Tensor, k: int | None
    ) -> tuple[torch.Tensor, int]:
        if memories.dim() == 4:
            memories = memories.reshape(-1, *memories.shape[2:])
        if memories.dim() != 3 or memories.shape[1:] != (self.n_mem, self.hidden_size):
            raise ValueError(
                f"memories must be (B*k, {self.n_mem}, {self.hidden_size}), got {tuple(memories.shape)}"
            )
        if k is None:
            if not questions or memories.shape[0] % len(questions):
                raise ValueError(
                    f"{memories.shape[0]} memories cannot be split evenly over {len(questions)} questions"
                )
            k = memories.shape[0] // len(questions)
        if memories.shape[0] != len(questions) * k:
            raise ValueError(f"expected {len(questions)} * {k} memories, got {memories.shape[0]}")
        return memories, k

    def generator_active(self):
        """Context manager: the generator adapter active (plain base LM if absent)."""
        return self.adapters.using(DECODER_ADAPTER if DECODER_ADAPTER in self.adapters else None)

    @torch.no_grad()
    def generate_from_embeddings(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int = 128,
        **generate_kwargs: Any,
    ) -> Any:
        """`generate` on spliced embeddings with the generator adapter, greedy by default.
        Returns what `transformers` `generate` returns (new token ids only)."""
        self.eval()
        kwargs: dict[str, Any] = {
            "do_sample": False,
            "top_p": None,
            "temperature": None,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        kwargs.update(generate_kwargs)
        with self.generator_active():
            return self.decoder.generate(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                **kwargs,
            )

    def _generate_text(
        self, inputs: dict[str, torch.Tensor], max_new_tokens: int, **generate_kwargs: Any
    ) -> list[str]:
        out = self.generate_from_embeddings(
            inputs["inputs_embeds"], inputs["attention_mask"], max_new_tokens, **generate_kwargs
        )
        return reference_decode(self.tokenizer, out)

    def generate_from_compressed_documents_and_questions(
        self,
        questions: Sequence[str],
        compressed_documents: torch.Tensor,
        max_new_tokens: int = 128,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Answer each question from its `k` documents' memory.

        Args:
            questions: B questions.
            compressed_documents: (B * k, n_mem, H) (or (B, k, n_mem, H)), question-major.
        """
        questions = validate_texts(questions, "question")
        if not questions:
            return []
        inputs = self.prepare_generation_inputs(questions, compressed_documents)
        return self._generate_text(inputs, max_new_tokens, **generate_kwargs)

    def generate_from_messages(
        self,
        messages: Sequence[dict[str, str]],
        max_new_tokens: int = 128,
        use_generator: bool = False,
        **generate_kwargs: Any,
    ) -> str:
        """Plain chat without memory: the base model (or, with `use_generator`, the
        generator adapter) answers chat-template `messages` ({"role", "content"} dicts).

        Example:
            >>> reply = model.generate_from_messages([{"role": "user", "content": "Hi"}],
            ...                                      max_new_tokens=4)
            >>> isinstance(reply, str)
            True
        """
        if not messages:
            raise ValueError("messages is empty")
        text = self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
        enc = self.tokenizer([text], add_special_tokens=False, return_tensors="pt").to(self.device)
        embeds = self.decoder.get_input_embeddings()(enc["input_ids"])
        kwargs: dict[str, Any] = {
            "do_sample": False,
            "top_p": None,
            "temperature": None,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        kwargs.update(generate_kwargs)
        self.eval()
        adapter = DECODER_ADAPTER if use_generator and DECODER_ADAPTER in self.adapters else None
        with torch.no_grad(), self.adapters.using(adapter):
            out = self.decoder.generate(
                inputs_embeds=embeds,
                attention_mask=enc["attention_mask"],
                max_new_tokens=max_new_tokens,
                **kwargs,
            )
        return reference_decode(self.tokenizer, out)[0]

    def _check_documents(self, questions: Sequence[str], documents: Sequence[Sequence[str]]) -> int:
        if len(documents) != len(questions):
            raise ValueError(f"got {len(questions)} questions but {len(documents)} document lists")
        sizes = {len(d) for d in documents}
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(
                f"every question needs the same, non-zero number of documents; got {sorted(sizes)}"
            )
        return sizes.pop()

    def _compress_unique(self, documents: Sequence[Sequence[str]], batch_size: int) -> torch.Tensor:
        """Compress each distinct text once; (B * N, n_mem, H) question-major."""
        flat = [t for docs in documents for t in docs]
        validate_texts(flat)
        unique = list(dict.fromkeys(flat))
        memory = self.compress_documents(unique, batch_size=batch_size)
        where = {t: i for i, t in enumerate(unique)}
        return memory[torch.as_tensor([where[t] for t in flat], device=memory.device)]

    def generate_from_text(
        self,
        questions: Sequence[str],
        documents: Sequence[Sequence[str]],
        max_new_tokens: int = 128,
        batch_size: int = 16,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Compress each question's documents and answer from all of them (k = len(docs))."""
        questions = validate_texts(questions, "question")
        if not questions and not documents:
            return []
        k = self._check_documents(questions, documents)
        memory = self._compress_unique(documents, batch_size)
        inputs = self._generation_inputs(self._answer_prompts(questions, k), memory, k)
        return self._generate_text(inputs, max_new_tokens, **generate_kwargs)

    def generate_from_paraphrase(
        self,
        questions: Sequence[str],
        documents: Sequence[Sequence[str]],
        max_new_tokens: int = 128,
        template_index: int | None = None,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Stage-1 paraphrase of each document list (question text is ignored, as in the
        reference). The template is drawn with `random.choice` unless pinned."""
        if len(questions) != len(documents):
            raise ValueError(f"got {len(questions)} questions but {len(documents)} document lists")
        if not documents:
            return []
        k = self._check_documents(questions, documents)
        memory = self._compress_unique(documents, 16)
        texts = [
            prompts.paraphrase_prompt(
                self.tokenizer, self.special.memory_block, k, template_index=template_index
            )[0]
            for _ in documents
        ]
        inputs = self._generation_inputs(texts, memory, k)
        return self._generate_text(inputs, max_new_tokens, **generate_kwargs)

    @torch.no_grad()
    def generate_from_questions(
        self,
        questions: Sequence[str],
        documents: Sequence[Sequence[str]] | None = None,
        max_new_tokens: int = 128,
        k: int | None = None,
        candidate_memories: torch.Tensor | None = None,
        batch_size: int = 16,
        **generate_kwargs: Any,
    ) -> tuple[list[str], torch.Tensor]:
        """Retrieve `k` of each question's candidates with the query reasoner, then answer.

        Args:
            questions: B questions.
            documents: B lists of N candidate texts (N >= k), or
            candidate_memories: (B, N, n_mem, H) already-compressed candidates.
            k: documents to read (default `config.generation_top_k`).

        Returns:
            (answers, topk_idx (B, k) indices into each question's candidates, best first).

        Raises:
            MissingAdapterError: no query reasoner in this checkpoint.
            ValueError: mismatched lengths, fewer candidates than k, k not a positive int.
        """
        questions = validate_texts(questions, "question")
        k = self._top_k(k)
        if (documents is None) == (candidate_memories is None):
            raise ValueError("pass exactly one of documents or candidate_memories")
        if not questions:
            return [], torch.empty(0, k, dtype=torch.long)
        self.adapters.require(QUERY_ADAPTER)
        if documents is not None:
            n = self._check_documents(questions, documents)
            candidate_memories = self._compress_unique(documents, batch_size).reshape(
                len(questions), n, self.n_mem, self.hidden_size
            )
        elif candidate_memories.shape[0] != len(questions):
            raise ValueError(
                f"candidate_memories has {candidate_memories.shape[0]} rows for {len(questions)} questions"
            )
        if candidate_memories.shape[1] < k:
            raise ValueError(
                f"k={k} but only {candidate_memories.shape[1]} candidates per question"
            )
        queries = self.encode_queries(questions, batch_size=batch_size)
        selected, topk_idx, _ = self.select(queries, candidate_memories.to(self.device), k)
        inputs = self._generation_inputs(self._answer_prompts(questions, k), selected, k)
        return self._generate_text(inputs, max_new_tokens, **generate_kwargs), topk_idx

    # ------------------------------------------------------------------ saving
    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        official_format: bool = False,
        official_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        """Write the checkpoint: our format (safetensors, adapters + new-token rows), or with
        `official_format=True` the released one (`adapters.pth`,
        `decoder_first_last_layers.pth`, `config.json`) in `official_dtype`.

        Example:
            >>> import tempfile
            >>> folder = tempfile.mkdtemp()
            >>> model.save_pretrained(folder)
            >>> ClaraModel.from_pretrained(folder, base_model=model.config.decoder_model_name).n_mem == model.n_mem
            True
        """
        folder = Path(save_directory)
        adapters = {name: self.adapters.state_dict(name) for name in self.adapters.names}
        embed = self.decoder.get_input_embeddings().weight.detach().cpu()
        head = self.decoder.get_output_embeddings()
        untied = (
            head is not None
            and head.weight.data_ptr() != self.decoder.get_input_embeddings().weight.data_ptr()
        )
        config = self.config.model_copy()
        if official_format:
            full = {"model.embed_tokens.weight": embed.to(official_dtype).contiguous()}
            if untied:
                full["lm_head.weight"] = head.weight.detach().cpu().to(official_dtype).contiguous()
            adapters = {
                n: {k: v.to(official_dtype) for k, v in sd.items()} for n, sd in adapters.items()
            }
            write_released(folder, config, adapters, full)
            return
        matrices = {"embed_tokens": embed}
        if untied:
            matrices["lm_head"] = head.weight.detach().cpu()
        rows = {}
        for name, matrix in matrices.items():
            rows[name] = matrix[self.base_vocab_size :].contiguous()
            if name in self.base_row_patches:
                ids = self.base_row_patches[name]
                rows[f"{name}.patch_ids"] = ids.clone()
                rows[f"{name}.patch_rows"] = matrix[ids].contiguous()
        write_native(folder, config, adapters, rows)


def _rounds_base(files: CheckpointFiles) -> bool:
    """Released checkpoints were trained on a bf16 base; native ones record it."""
    extra = files.config.model_extra or {}
    if "clara_base_rounding" in extra:
        return extra["clara_base_rounding"] == "bfloat16"
    return files.released


__all__ += ["CheckpointCorruptError"]
