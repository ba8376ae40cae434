"""`ClaraConfig`: every key of the released CLaRa `config.json`, typed, plus ours.

The released format (`model_type: "CLaRa"`) is read and written key for key so that a
checkpoint we save with ``official_format=True`` loads in the reference code. Unknown keys
(e.g. ``transformers_version``, ``pad_token_id``) are kept verbatim and written back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["ClaraConfig", "TrainingStage"]

TrainingStage = Literal[
    "stage1", "stage1_2", "stage2", "stage2_reasoning", "stage2_pretrain_retrieval"
]

#: Format tag of our own native checkpoints (written as ``clara_format`` in config.json).
NATIVE_FORMAT_VERSION = 1


class ClaraConfig(BaseModel):
    """Configuration of a CLaRa model, compatible with the released ``config.json``.

    Only a handful of keys change behaviour: ``decoder_model_name``, ``doc_max_length``,
    ``compr_rate`` (together they give ``n_mem = doc_max_length // compr_rate``),
    ``different_mem_tokens``, ``sep``, ``lora_r``, ``generation_top_k`` and
    ``training_stage``. The others are kept for round-trip fidelity with the reference.

    Example:
        >>> cfg = ClaraConfig(decoder_model_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        ...                   doc_max_length=256, compr_rate=32)
        >>> cfg.n_mem
        8
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    decoder_model_name: str = Field(
        "meta-llama/Llama-2-7b-chat-hf", description="Base causal LM (local dir or hub id)."
    )
    doc_max_length: int = Field(128, gt=0, description="Token budget of one document.")
    quantization: str = "no"
    sep: bool = Field(False, description="Memory slots advance by n_mem+1 (True) or n_mem.")
    compr_model_name: str | None = "google-bert/bert-base-uncased"
    compr_rate: int = Field(64, gt=0, description="Tokens per memory vector.")
    compr_n_layers: int | None = None
    compr_every_n_layer: int | None = None
    compr_base_model_name: str | None = "mistralai/Mistral-7B-Instruct-v0.2"
    compr_rms_norm: bool = False
    compr_mlp_hidden_dim: int = 8096
    compr_use_mlp: bool = True
    compr_linear_type: str = "concat"
    lora: bool = False
    lora_compressor: bool = False
    training_form: str = "both"
    training_stage: str = "stage1"
    generation_top_k: int = Field(1, gt=0, description="Documents spliced per question.")
    lora_r: int = Field(16, gt=0)
    lora_r_compressor: int | None = None
    load_adapters: bool = True
    kbtc_training: bool = False
    optimize_mem_tokens: bool = False
    different_mem_tokens: bool = Field(False, description="<MEM0>..<MEMn-1> vs one <MEM>.")
    attn_implementation: str | None = None
    ae_mode: str = "token"
    max_new_tokens: int = 128
    stage2_retrieval_top_n: int = 1
    load_pretrained_checkpoint: bool = False
    device_map: Any = None
    model_type: str = "CLaRa"

    @field_validator("decoder_model_name")
    @classmethod
    def _non_empty_name(cls, value: str) -> str:
        if not value:
            raise ValueError("decoder_model_name must name a base causal LM")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> ClaraConfig:
        if self.doc_max_length // self.compr_rate < 1:
            raise ValueError(
                f"doc_max_length ({self.doc_max_length}) // compr_rate ({self.compr_rate}) "
                "must be at least 1 memory token"
            )
        if self.lora_r_compressor is None:
            # The reference sets it to lora_r in its constructor.
            object.__setattr__(self, "lora_r_compressor", self.lora_r)
        return self

    @property
    def n_mem(self) -> int:
        """Memory tokens per document (`doc_max_length // compr_rate`)."""
        return self.doc_max_length // self.compr_rate

    @classmethod
    def for_training(
        cls,
        decoder_model_name: str,
        *,
        doc_max_length: int = 256,
        compr_rate: int = 32,
        lora_r: int = 16,
        generation_top_k: int = 5,
        training_stage: str = "stage1",
    ) -> ClaraConfig:
        """The configuration the reference training CLI builds (`create_clara_config`)."""
        return cls(
            decoder_model_name=decoder_model_name,
            doc_max_length=doc_max_length,
            compr_rate=compr_rate,
            lora_r=lora_r,
            generation_top_k=generation_top_k,
            training_stage=training_stage,
            sep=True,
            compr_model_name=None,
            compr_n_layers=5,
            compr_use_mlp=False,
            lora=True,
            training_form="both_separately",
            optimize_mem_tokens=True,
            different_mem_tokens=True,
        )

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> ClaraConfig:
        """Read a `config.json` (released or native); raises ValueError naming the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a readable CLaRa config.json ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: config.json must hold a JSON object")
        try:
            return cls.model_validate(data)
        except Exception as exc:  # pydantic.ValidationError: name the file too
            raise ValueError(f"{path}: invalid CLaRa config: {exc}") from exc

    def to_json_file(self, path: str | os.PathLike[str]) -> None:
        """Write all keys (including unknown ones read from disk), sorted, indented."""
        Path(path).write_text(
            json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n",
            encoding="utf-8",
        )
