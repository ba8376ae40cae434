"""Prompt builders with the reference's strings, verbatim (typos included).

Trained checkpoints were tuned on exactly these strings, so they are part of the model:
do not "fix" the grammar of the system prompts or add a space after ``Question:``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from jinja2.exceptions import TemplateError
from transformers import PreTrainedTokenizerBase

__all__ = [
    "PARAPHRASE_INSTRUCTIONS",
    "SYSTEM_ANSWER",
    "SYSTEM_PARAPHRASE",
    "SYSTEM_QA",
    "answer_prompt",
    "memory_block",
    "paraphrase_prompt",
    "qa_pretraining_prompt",
]

SYSTEM_QA = (
    "You are a helpful assistant. Given a document, your task is to generate some single "
    "questions to cover all key information of the document and answer them sequentially."
)
SYSTEM_PARAPHRASE = (
    "You are a helpful assistant. Your task is follow the instructions to paraphrase the "
    "background information."
)
SYSTEM_ANSWER = (
    "You are a helpful assistant. Your task is to extract relevant information from "
    "provided documents and to answer to questions as briefly as possible."
)

PARAPHRASE_INSTRUCTIONS: tuple[str, ...] = (
    "Background: {docs} means the same as",
    "Background: {docs} Can you put the above sentences in your own terms?",
    "Background: {docs} Please provide a reinterpretation of the preceding background text.",
    "These two expressions are equivalent in essence:\n(1) {docs}\n(2)",
    "Background: {docs} is a paraphrase of what?",
    "Background: {docs} Could you give me a different version of the background sentences above?",
    "In other words, background: {docs} is just another way of saying:",
    "You're getting across the same point whether you say background: {docs} or",
    "Background: {docs} After unpacking the ideas in the background information above, we got:",
    "Background: {docs} Please offer a restatement of the background sentences I've just read.",
    "Background: {docs}, which also means:",
    "Strip away the mystery, and you'll find background: {docs} is simply another rendition of:",
    "The essence of background: {docs} is captured again in the following statement:",
)

# Gemma-style templates reject a system turn with this message; the reference then folds
# the system prompt into the user turn.
_SYSTEM_ROLE_ERROR = "System role not supported"


def memory_block(block: str, k: int) -> str:
    """`k` memory slots (each: the document's memory tokens + `<SEP>`), nothing between."""
    return block * k


def _render(
    tokenizer: PreTrainedTokenizerBase, system: str, user: str, answer: str | None
) -> tuple[str, str | None]:
    """(generation prompt, full text with the answer or None) through the chat template."""
    user = user.replace(":\\ ", ": ")  # reference no-op unless the text has this sequence
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def apply(msgs: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            msgs,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=False,
        )

    try:
        prompt = apply(messages, True)
    except TemplateError as exc:
        if _SYSTEM_ROLE_ERROR not in str(exc):
            raise
        messages = [{"role": "user", "content": system + "\n" + user}]
        prompt = apply(messages, True)
    if answer is None:
        return prompt, None
    full = apply(messages + [{"role": "assistant", "content": answer}], False)
    return prompt, full


def answer_prompt(
    tokenizer: PreTrainedTokenizerBase,
    block: str,
    k: int,
    question: str,
    answer: str | None = None,
) -> tuple[str, str | None]:
    """Question answering over `k` memory slots (stage 1_2, stage 2 and inference)."""
    user = "Background:\n" + memory_block(block, k) + "\n\nQuestion:" + question
    return _render(tokenizer, SYSTEM_ANSWER, user, answer)


def text_rag_prompt(tokenizer: PreTrainedTokenizerBase, question: str, docs: Sequence[str]) -> str:
    """The answer prompt a text-RAG baseline sends the base model: the same system prompt
    and layout as `answer_prompt`, with the documents' text where CLaRa puts memory slots
    (what the benchmarks and the demo compare CLaRa's context length against)."""
    user = "Background:\n" + "\n\n".join(docs) + "\n\nQuestion:" + question
    return _render(tokenizer, SYSTEM_ANSWER, user, None)[0]


def qa_pretraining_prompt(
    tokenizer: PreTrainedTokenizerBase,
    block: str,
    k: int,
    questions: Sequence[str],
    answers: Sequence[str],
) -> tuple[str, str]:
    """Stage-1 QA pretraining: the assistant writes every `Question: q\\nAnswer: a` line."""
    target = "\n".join(f"Question: {q}\nAnswer: {a}" for q, a in zip(questions, answers))
    prompt, full = _render(tokenizer, SYSTEM_QA, "Background:\n" + memory_block(block, k), target)
    assert full is not None
    return prompt, full


def paraphrase_prompt(
    tokenizer: PreTrainedTokenizerBase,
    block: str,
    k: int,
    answer: str | None = None,
    template_index: int | None = None,
    rng: random.Random | None = None,
) -> tuple[str, str | None]:
    """Stage-1 paraphrase prompt; the template is drawn like the reference's
    `random.choice` unless `template_index` pins it (for reproducible outputs)."""
    if template_index is None:
        template = (rng or random).choice(PARAPHRASE_INSTRUCTIONS)
    else:
        template = PARAPHRASE_INSTRUCTIONS[template_index]
    user = template.replace("{docs}", memory_block(block, k))
    return _render(tokenizer, SYSTEM_PARAPHRASE, user, answer)
