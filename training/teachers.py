"""Teachers that write training questions, answers and paraphrases for a document chunk.

* `OfflineTeacher` (default) needs no LLM: cloze questions from the chunk's own sentences
  (an entity, number or key word is blanked out and becomes the answer) and the cleaned
  chunk text as the paraphrase target (reconstruction). Deterministic and fast.
* `SelfTeacher` (`self_teacher.py`, default for ``--docs``): the run's base model reading
  the chunk text answers the cloze questions (self-distillation).
* `HFTeacher` prompts any Hugging Face causal LM (local folder, or a hub id when the
  network is allowed) through its chat template.
* `OpenAITeacher` calls an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, TGI,
  llama.cpp server, OpenAI, ...), with the key from an environment variable.

LLM teachers fall back to the offline teacher for a chunk whose reply cannot be parsed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.error
import urllib.request
from typing import Any, Protocol

import tenacity

__all__ = [
    "HFTeacher",
    "OfflineTeacher",
    "OpenAITeacher",
    "Teacher",
    "clean_markdown",
    "load_causal_lm",
    "make_teacher",
]

logger = logging.getLogger(__name__)

QA_PROMPT = (
    "Write {n} short question-answer pairs that can be answered from the document below. "
    "Each answer must be a short phrase taken from the document. Use exactly this format, "
    "one pair after another:\nQ: <question>\nA: <answer>\n\nDocument:\n{text}"
)
PARAPHRASE_PROMPT = (
    "Paraphrase the following document in your own words, keeping every fact, name and "
    "number:\n\n{text}"
)


class Teacher(Protocol):
    """Writes training targets for one chunk of text."""

    name: str

    def qa_pairs(self, text: str, n: int) -> list[tuple[str, str]]:
        """Up to `n` (question, answer) pairs answerable from `text`."""

    def paraphrase(self, text: str) -> str:
        """A restatement of `text` (stage-1 paraphrase target)."""


def clean_markdown(text: str) -> str:
    """Markdown/template markup removed, whitespace collapsed (for questions/paraphrases)."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"\{%.*?%\}|\{\{.*?\}\}", " ", text, flags=re.S)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", " ", text)
    # A heading becomes a sentence of its own, not the start of the next one.
    text = re.sub(r"^\s{0,3}#{1,6}\s+(.*?)[.:]?\s*$", r"\1.", text, flags=re.M)
    text = re.sub(r"^\s{0,3}(#{1,6}|[-*+]|\d+\.)\s+", "", text, flags=re.M)
    text = re.sub(r"[*_`|>]+", " ", text)
    return re.sub(r"\s+", " ", text).strip()


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")
_NUMBER = re.compile(r"\b\d[\d,.:/%-]*\d\b|\b\d+\b")
_CAPITALISED = re.compile(r"\b[A-Z][\w'&-]*(?:\s+(?:(?:of|the|and|for)\s+)?[A-Z][\w'&-]*)*")
_QUOTED = re.compile(r"\"([^\"]{3,60})\"")


def _answer_span(sentence: str) -> str | None:
    """The span a cloze question asks for: a quote, number, name, or long word."""
    words = sentence.split()
    for pattern in (_QUOTED, _NUMBER):
        match = pattern.search(sentence)
        if match:
            return match.group(1) if pattern is _QUOTED else match.group(0)
    first_word_end = len(words[0]) if words else 0
    for match in _CAPITALISED.finditer(sentence):
        span = match.group(0).strip(" .,;:")
        if match.start() >= first_word_end and len(span) >= 3:
            return span
    longest = max((w.strip(".,;:()!?\"'") for w in words[len(words) // 3 :]), key=len, default="")
    return longest if len(longest) >= 6 else None


class OfflineTeacher:
    """Cloze questions and reconstruction targets; no model needed.

    Example:
        >>> OfflineTeacher().qa_pairs("The handbook was written in 2015 by the 18F team.", 1)
        [('Complete the statement: "The handbook was written in ____ by the 18F team."', '2015')]
    """

    name = "offline"

    def qa_pairs(self, text: str, n: int) -> list[tuple[str, str]]:
        pairs = []
        for sentence in _SENTENCE_END.split(clean_markdown(text)):
            if not 6 <= len(sentence.split()) <= 60:
                continue
            span = _answer_span(sentence)
            if not span or span not in sentence:
                continue
            masked = sentence.replace(span, "____", 1)
            pairs.append((f'Complete the statement: "{masked}"', span))
            if len(pairs) >= n:
                break
        return pairs

    def paraphrase(self, text: str) -> str:
        return clean_markdown(text)


def _parse_pairs(reply: str, n: int) -> list[tuple[str, str]]:
    pairs, question = [], None
    for line in reply.splitlines():
        line = line.strip()
        if line[:2].upper() == "Q:":
            question = line[2:].strip()
        elif line[:2].upper() == "A:" and question:
            answer = line[2:].strip()
            if answer:
                pairs.append((question, answer))
            question = None
    return pairs[:n]


class _LLMTeacher:
    name = "llm"

    def __init__(self) -> None:
        self._fallback = OfflineTeacher()
        self.fallbacks = 0

    def complete(self, prompt: str) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def qa_pairs(self, text: str, n: int) -> list[tuple[str, str]]:
        pairs = _parse_pairs(self.complete(QA_PROMPT.format(n=n, text=text)), n)
        if not pairs:
            self.fallbacks += 1
            return self._fallback.qa_pairs(text, n)
        return pairs

    def paraphrase(self, text: str) -> str:
        reply = self.complete(PARAPHRASE_PROMPT.format(text=text)).strip()
        if not reply:
            self.fallbacks += 1
            return self._fallback.paraphrase(text)
        return reply


def load_causal_lm(
    model_name: str, device: str | None = None, allow_network: bool | None = None
) -> tuple[Any, Any, str]:
    """(model in eval mode, tokenizer, device) of a teacher causal LM."""
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    from clara_integrations.modeling.hub import resolve_base_model  # noqa: PLC0415

    path = resolve_base_model(model_name, allow_network=allow_network)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # trust_remote_code=False: an `auto_map` in the teacher's config.json must not make
    # transformers run its code or block on a "[y/N]" question.
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False)
    return model.to(device).eval(), tokenizer, device


class HFTeacher(_LLMTeacher):
    """A Hugging Face causal LM as teacher (greedy decoding through its chat template)."""

    def __init__(
        self,
        model_name: str,
        device: str | None = None,
        max_new_tokens: int = 384,
        allow_network: bool | None = None,
    ) -> None:
        super().__init__()
        self.name = f"hf:{model_name}"
        self.model, self.tokenizer, self.device = load_causal_lm(model_name, device, allow_network)
        self.max_new_tokens = max_new_tokens

    def complete(self, prompt: str) -> str:
        import torch  # noqa: PLC0415

        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.device)
        with torch.no_grad():
            out = self.model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


class OpenAITeacher(_LLMTeacher):
    """An OpenAI-compatible chat endpoint as teacher; the API key is read from the
    environment variable `api_key_env` (default ``OPENAI_API_KEY``, may be unset for
    local servers)."""

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        retries: int = 3,
    ) -> None:
        super().__init__()
        self.name = f"openai:{model}"
        self.model, self.url = model, base_url.rstrip("/") + "/chat/completions"
        self.api_key = os.environ.get(api_key_env, "")
        self.timeout, self.retries = timeout, retries

    def complete(self, prompt: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "temperature": 0,
                "messages": [{"role": "user", "content": prompt}],
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        # tenacity: exponential back-off, and only transient failures are retried (network,
        # timeouts, HTTP 429/5xx); a malformed reply or a 4xx is the caller's to fix.
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries),
            wait=tenacity.wait_exponential(multiplier=0.5, max=20),
            retry=tenacity.retry_if_exception(_transient),
            reraise=True,
        )
        try:
            raw = retrying(self._post, body, headers)
        except OSError as exc:
            raise RuntimeError(
                f"teacher endpoint {self.url} failed after {self.retries} attempt(s): {exc}"
            ) from exc
        try:
            return json.loads(raw)["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise RuntimeError(
                f"teacher endpoint {self.url} sent a reply that is not an "
                f"OpenAI chat completion: {raw[:200]!r}"
            ) from exc

    def _post(self, body: bytes, headers: dict[str, str]) -> bytes:
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read()


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code == 429 or exc.code >= 500
    return isinstance(exc, OSError)  # connection refused/reset, DNS, timeouts


def make_teacher(
    kind: str,
    model: str | None = None,
    url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    show_progress: bool = True,
) -> Teacher:
    """`offline`, `self` (needs `model`: the run's base model), `hf` (needs `model`) or
    `openai` (needs `model` and `url`).

    Raises:
        ValueError: unknown kind or a missing argument (naming the flag).
    """
    if kind == "offline":
        return OfflineTeacher()
    if kind == "self":
        if not model:
            raise ValueError("--teacher self needs the base model (--base or --teacher-model)")
        from .self_teacher import SelfTeacher  # noqa: PLC0415 - imports this module

        return SelfTeacher(model, show_progress=show_progress)
    if kind == "hf":
        if not model:
            raise ValueError("--teacher hf needs --teacher-model (a local folder or hub id)")
        return HFTeacher(model)
    if kind == "openai":
        if not model or not url:
            raise ValueError(
                "--teacher openai needs --teacher-model and --teacher-url "
                "(e.g. http://localhost:8000/v1)"
            )
        return OpenAITeacher(model, url, api_key_env)
    raise ValueError(f"--teacher must be offline, self, hf or openai, got {kind!r}")
