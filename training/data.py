"""Training data: the reference's JSONL formats, read with line-numbered errors.

Field resolution follows the reference's `preprocess_data` (spec §5.2), in priority order:

* documents: ``"docs"`` → ``"context"`` → ``"content"`` (a list); an entry may be a string
  or, as in the QA dev sets of ``../shared/data``, an object ``{"title", "text"}``;
* answer: ``"answer"`` (string) → ``"answers"`` (list) → ``"golden_answers"`` (list) →
  ``"gold_answer"`` (string or list; the reference README's column, which its loader
  ignores: users copy that format, so it is read, last, rather than failing every line);
* ``"data_type"`` (default ``"qa"``), ``"question"`` (unused for paraphrase rows),
  ``"pos_index"`` (alias ``"gold"``, default none).

Extensions over the reference, each harmless for its own files: document objects, the
``"gold"`` alias, ``"gold_answer"``, and a stage-2/3 answer list taking its first entry as
the training target (all entries are kept for scoring). A paraphrase row with a plain
``"answer"`` string uses the whole string (the reference would take its first character,
spec §9.2).

Files are UTF-8, with or without a byte-order mark. A line that is not valid UTF-8 or
JSON, holds a lone surrogate (an unpaired ``\\ud800``-``\\udfff`` escape, which no tokenizer
can encode) or lacks a field is skipped and reported as ``file:line: why``
(`summarize_issues` makes one warning of them); ``strict`` raises at the first instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "REFERENCE_STAGE",
    "STAGES",
    "DataError",
    "Example",
    "LoadResult",
    "doc_text",
    "iter_jsonl",
    "iter_text_lines",
    "load_examples",
    "parse_record",
    "summarize_issues",
    "write_jsonl",
]

logger = logging.getLogger(__name__)

#: Our stage names, in training order, and the reference's `--stage` value for each.
STAGES = ("compress", "instruct", "retrieval", "e2e")
REFERENCE_STAGE = {
    "compress": "stage1",
    "instruct": "stage1_2",
    "retrieval": "stage2_pretrain_retrieval",
    "e2e": "stage2",
}


class DataError(ValueError):
    """A malformed data line; the message starts with ``file:line``."""


@dataclass(frozen=True)
class Example:
    """One training or evaluation item, whatever the stage.

    `questions`/`targets` hold one entry for question answering and paraphrase rows and
    several for stage-1 QA rows (all of a document's questions in one target).
    """

    docs: tuple[str, ...]
    questions: tuple[str, ...]
    targets: tuple[str, ...]
    data_type: str = "qa"
    pos_index: tuple[int, ...] = ()
    answers: tuple[str, ...] = ()  # every reference answer, for EM/F1
    origin: str = ""  # "file:line", for messages

    @property
    def question(self) -> str:
        return self.questions[0] if self.questions else ""

    @property
    def target(self) -> str:
        return self.targets[0]

    def to_json(self) -> dict[str, Any]:
        """The reference's JSONL layout for this example (what `parse_record` reads back)."""
        row: dict[str, Any] = {"data_type": self.data_type, "docs": list(self.docs)}
        if self.data_type == "paraphrase":
            row["answers"] = list(self.targets)
        elif len(self.questions) > 1:
            row.update(data_type="qa", question=list(self.questions), answers=list(self.targets))
        else:
            row.update(question=self.question, answer=self.target)
            if self.answers and list(self.answers) != [self.target]:
                row["answers"] = list(self.answers)
        if self.pos_index:
            row["pos_index"] = list(self.pos_index)
        return row


def doc_text(doc: Any) -> str:
    """A document entry as text: a string, or `{"title", "text"}` as ``title\\ntext``."""
    if isinstance(doc, str):
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("text"), str):
        title = doc.get("title") or ""
        return f"{title}\n{doc['text']}" if title else doc["text"]
    raise TypeError(
        f"a document must be a string or an object with 'text', got {type(doc).__name__}"
    )


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"{what} must be a string or a list of strings")


def parse_record(obj: Any, origin: str = "") -> Example:
    """Resolve the fields of one JSON object (spec §5.2).

    Raises:
        DataError: a field is missing or has the wrong type (message starts with origin).

    Example:
        >>> ex = parse_record({"question": "Who?", "answer": "Ann", "docs": ["Ann did."]})
        >>> ex.question, ex.target, ex.docs
        ('Who?', 'Ann', ('Ann did.',))
    """
    try:
        if not isinstance(obj, dict):
            raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
        docs_field = next((obj[k] for k in ("docs", "context", "content") if k in obj), None)
        if not isinstance(docs_field, list) or not docs_field:
            raise TypeError("needs a non-empty list in 'docs' (or 'context' / 'content')")
        docs = tuple(doc_text(d) for d in docs_field)
        if any(not d.strip() for d in docs):
            raise ValueError("a document is empty")
        if isinstance(obj.get("answer"), str):
            answers = (obj["answer"],)
        elif isinstance(obj.get("answers"), list):
            answers = _strings(obj["answers"], "'answers'")
        elif isinstance(obj.get("golden_answers"), list):
            answers = _strings(obj["golden_answers"], "'golden_answers'")
        elif "gold_answer" in obj:
            answers = _strings(obj["gold_answer"], "'gold_answer'")
        else:
            raise TypeError(
                "needs 'answer' (string), 'answers' or 'golden_answers' (list) or "
                "'gold_answer'; add the answer the model should learn to give"
            )
        if not answers:
            raise ValueError("the answer list is empty")
        data_type = obj.get("data_type", "qa")
        if data_type not in ("qa", "paraphrase"):
            raise ValueError(f"unknown data_type {data_type!r} (expected 'qa' or 'paraphrase')")
        pos = obj.get("pos_index", obj.get("gold", []))
        if not isinstance(pos, list) or not all(
            isinstance(i, int) and 0 <= i < len(docs) for i in pos
        ):
            raise ValueError(f"'pos_index' must list indices into the {len(docs)} docs")
        if data_type == "paraphrase":
            return Example(docs, (), answers[:1], "paraphrase", tuple(pos), answers, origin)
        questions = _strings(obj.get("question"), "'question'")
        if any(not q.strip() for q in questions):
            raise ValueError("a question is empty")
        if len(questions) > 1:
            if len(questions) != len(answers):
                raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
            return Example(docs, questions, answers, "qa", tuple(pos), answers, origin)
        return Example(docs, questions, answers[:1], "qa", tuple(pos), answers, origin)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{origin}: {exc}") from None


@dataclass
class LoadResult:
    """Examples read from one or more files, and the problems found (`file:line: why`)."""

    examples: list[Example] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)

    def extend(self, other: LoadResult) -> None:
        self.examples.extend(other.examples)
        self.issues.extend(other.issues)


# Code points U+D800-U+DFFF only survive decoding as halves of a broken UTF-16 pair.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


def _decode(raw: bytes, first: bool) -> str:
    # utf-8-sig on line 1: editors on Windows start files with a BOM, which would make
    # line 1 invalid JSON; it is not part of the data.
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the "
            "line); re-save the file as UTF-8"
        ) from None


def iter_text_lines(
    path: str | os.PathLike[str], *, strict: bool = False
) -> Iterator[tuple[str, str | DataError]]:
    """Yield ``("file:line", text)`` for each line of `path` (line ends kept), or a
    `DataError` in place of a line that is not valid UTF-8. A leading BOM is dropped.

    Raises:
        DataError: with `strict`, the first undecodable line.
    """
    path = Path(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            origin = f"{path}:{number}"
            try:
                yield origin, _decode(raw, number == 1)
            except DataError as exc:
                error = DataError(f"{origin}: {exc}")
                if strict:
                    raise error from None
                yield origin, error


def iter_jsonl(path: str | os.PathLike[str], *, strict: bool = False) -> Iterator[tuple[str, Any]]:
    """Yield ``("file:line", object)`` for each non-blank line of JSONL `path`, or a
    `DataError` in place of a line that is not UTF-8, not JSON, or holds a lone surrogate.

    Raises:
        DataError: with `strict`, the first such line.
    """
    for origin, text in iter_text_lines(path, strict=strict):
        if isinstance(text, DataError):
            yield origin, text
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
            if _lone_surrogate(obj):
                raise DataError(
                    "holds a lone surrogate (an unpaired \\ud800-\\udfff escape, not "
                    "text); fix or drop the line"
                )
        except json.JSONDecodeError as exc:
            obj = DataError(f"{origin}: not valid JSON ({exc.msg} at column {exc.colno})")
        except DataError as exc:
            obj = DataError(f"{origin}: {exc}")
        if isinstance(obj, DataError) and strict:
            raise obj
        yield origin, obj


def _reason(issue: str) -> str:
    """The kind of an issue (``file:line: why (details)`` -> ``why``), for counting."""
    why = issue.split(": ", 1)[-1] if re.match(r"^.*:\d+: ", issue) else issue
    return re.split(r" \(|; |: ", why, maxsplit=1)[0]


def summarize_issues(issues: Sequence[str], first: int = 5) -> str:
    """One message for many skipped lines: the count per kind, then the first few.

    Example:
        >>> print(summarize_issues(["a.jsonl:2: not valid JSON (x)", "a.jsonl:5: not valid JSON (y)"]))
        skipped 2 (2 not valid JSON); first:
          a.jsonl:2: not valid JSON (x)
          a.jsonl:5: not valid JSON (y)
    """
    counts = Counter(_reason(i) for i in issues)
    kinds = ", ".join(f"{n} {why}" for why, n in counts.most_common())
    lines = [f"skipped {len(issues)} ({kinds}); first:"]
    lines += [f"  {issue}" for issue in issues[:first]]
    if len(issues) > first:
        lines.append(f"  ... and {len(issues) - first} more")
    return "\n".join(lines)


def load_examples(
    paths: Sequence[str | os.PathLike[str]],
    *,
    strict: bool = False,
    max_examples: int | None = None,
) -> LoadResult:
    """Read reference-format JSONL files; malformed lines and empty files are skipped and
    reported (`LoadResult.issues`).

    Args:
        paths: JSONL files, read in order.
        strict: raise on the first malformed line instead of skipping it.
        max_examples: keep only the first N good examples (the reference's --max_samples).

    Raises:
        FileNotFoundError: a file does not exist.
        DataError: with `strict`, the first malformed line or empty file (``file:line: why``).
    """
    result = LoadResult()
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise FileNotFoundError(f"data file {path} does not exist")
        lines = 0
        for origin, obj in iter_jsonl(path, strict=strict):
            lines += 1
            if max_examples is not None and len(result.examples) >= max_examples:
                return result
            try:
                if isinstance(obj, DataError):
                    raise obj
                result.examples.append(parse_record(obj, origin))
            except DataError as exc:
                if strict:
                    raise
                result.issues.append(str(exc))
        if not lines:
            empty = DataError(f"{path}:1: the file is empty (no JSON lines); pass the right file")
            if strict:
                raise empty
            result.issues.append(str(empty))
    return result


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSONL atomically (temporary file + rename); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count
