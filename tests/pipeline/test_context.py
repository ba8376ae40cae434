"""The context registry: documents' memory found again inside LLM prompt text."""

from __future__ import annotations

import torch

from clara_integrations.pipeline.context import ContextRegistry


def _memory(value: float) -> torch.Tensor:
    return torch.full((2, 3), float(value))


def _values(matched) -> list[int] | None:
    return None if matched is None else [int(m[0, 0]) for _, m in matched]


def test_registry_splits_a_context_into_registered_nodes():
    registry = ContextRegistry()
    texts = ["Alpha beta.", "Alpha beta gamma.", "Delta\n\nepsilon.", "a b", "a", "b c"]
    registry.register("m", texts, [_memory(i) for i in range(len(texts))])
    match = lambda context: _values(registry.match("m", context))  # noqa: E731
    assert match("Alpha beta.\n\nDelta\n\nepsilon.") == [0, 2]
    assert match("  Alpha beta gamma.\nAlpha beta.  ") == [1, 0]  # any whitespace between/around
    assert match("Delta\n\nepsilon. Alpha beta gamma.") == [2, 1]
    assert match("a b c") == [4, 5]  # "a b" first (longest) leads nowhere: backtracks
    assert match("Alpha beta. gamma.") is None  # text left over
    assert match("Alpha beta.x") is None  # a node ends mid-word
    assert match("Alpha beta") is None  # a node cut short
    assert match("") is None and match(" \n ") is None
    assert registry.match("another-model", "Alpha beta.") is None


def test_registry_is_bounded_and_skips_nodes_without_memory():
    registry = ContextRegistry(max_items=2)
    nodes = ["one", "two", "three"]
    registry.register("m", nodes, [_memory(1), _memory(2), _memory(3)])
    assert (
        len(registry) == 2
        and registry.match("m", "one") is None
        and _values(registry.match("m", "two three")) == [2, 3]
    )
    assert registry.get("m", ["one"]) is None and len(registry.get("m", ["two", "three"])) == 2
    registry.register("m", [nodes[2]], [_memory(3)])  # the same memory again: one entry
    assert len(registry) == 2 and _values(registry.match("m", "three")) == [3]
    registry.register("m", ["four", "  "], [None, _memory(5)])
    registry.register(None, ["five"], [_memory(6)])
    assert len(registry) == 2
    per_entry = _memory(0).numel() * 4 + len("three")
    by_bytes = ContextRegistry(max_bytes=2 * per_entry)
    by_bytes.register("m", ["three", "seven", "eight"], [_memory(i) for i in range(3)])
    assert len(by_bytes) == 2 and by_bytes.nbytes == 2 * per_entry
    by_bytes.clear()
    assert len(by_bytes) == 0 and by_bytes.nbytes == 0


def test_find_locates_registered_contents_anywhere_in_a_prompt():
    registry = ContextRegistry()
    texts = ["Paris is in France.", "Paris is in France. It is big.", "Rome is in Italy."]
    registry.register("m", texts, [_memory(i) for i in range(3)])
    prompt = (
        "Answer from the context.\nContext: Paris is in France. It is big.\n\n"
        "Rome is in Italy.\nQuestion: where is Rome?"
    )
    found = registry.find("m", prompt)
    assert [int(m[0, 0]) for _, _, m in found] == [1, 2]  # the longest at one start
    assert [prompt[a:b] for a, b, _ in found] == [texts[1], texts[2]]
    assert registry.find("m", "Paris is in France.x") == []  # ends mid-word
    assert registry.find("m", "nothing here") == [] and registry.find("other", prompt) == []


def test_one_content_with_two_different_memories_matches_nothing():
    """Two nodes whose text renders the same but whose memories differ (metadata the
    embedding reads and the LLM does not): the later one used to answer for both."""
    registry = ContextRegistry()
    registry.register("m", ["Same text.", "Other."], [_memory(1), _memory(5)])
    registry.register("m", ["Same text."], [_memory(1) * (1 + 1e-3)])  # float16 vs float32
    assert _values(registry.match("m", "Same text.\n\nOther.")) == [1, 5]
    registry.register("m", ["Same text."], [_memory(2)])
    assert registry.match("m", "Same text.\n\nOther.") is None  # the text path, warned
    assert registry.get("m", ["Same text."]) is None
    assert [int(m[0, 0]) for _, _, m in registry.find("m", "Q: Same text. Other.")] == [5]
    registry.register("m", ["Same text."], [_memory(1)])  # still two memories around
    assert registry.get("m", ["Same text."]) is None


def test_find_takes_only_contents_set_apart_as_template_blocks():
    """A short retrieved text ("Python") inside an unrelated sentence used to turn a plain
    chat call into a memory answer with the word cut out of the question."""
    registry = ContextRegistry()
    registry.register("m", ["Python", "Mexico"], [_memory(1), _memory(2)])
    assert registry.find("m", "Translate: I love Python and Mexico very much.") == []
    assert registry.find("m", "Is Python faster than Rust") == []
    for prompt in ("Python", "Context: Python\nQuestion: x?", "Docs:\nPython  \nMexico"):
        assert len(registry.find("m", prompt)) == prompt.count("Python") + prompt.count("Mexico")
