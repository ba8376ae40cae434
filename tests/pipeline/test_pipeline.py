"""ClaraPipeline on the tiny fixture: retrieve, rerank, memories and their cache, answer,
streaming with stop strings, errors, and the store protocol."""

from __future__ import annotations

import threading

import pytest
import torch

from clara_integrations import MissingAdapterError
from clara_integrations.pipeline import (
    CLEANUP_HOLD,
    EMPTY_QUERY,
    ClaraPipeline,
    CompressionCache,
    Generation,
    Item,
    MemoryStoreProtocol,
)
from clara_integrations.store import MemoryStore
from tests.pipeline.conftest import docs_store, load_reference

N_NEW = 8  # the fixture's reference generations: greedy, 8 new tokens


@pytest.fixture(scope="module")
def reference(fixture_dir) -> dict:
    return load_reference(fixture_dir)


@pytest.fixture(scope="module")
def store(e2e_model, reference):
    return docs_store(e2e_model, reference["docs"], [str(i) for i in range(len(reference["docs"]))])


@pytest.fixture(scope="module")
def pipeline(e2e_model, store):
    return ClaraPipeline(e2e_model, store)


def _no_compression(*args, **kwargs):
    raise AssertionError("nothing should be compressed here")


def test_retrieve_ranks_by_cosine_and_carries_stored_memory(pipeline, e2e_model, store, reference):
    question = reference["questions"][0]
    items = pipeline.retrieve(question, k=3)
    q = e2e_model.encode_queries([question])
    cos = torch.nn.functional.cosine_similarity(
        q, store.get_memories([str(i) for i in range(5)]).flatten(1)
    )
    assert [i.id for i in items] == [str(j) for j in cos.argsort(descending=True)[:3].tolist()]
    for item in items:
        assert item.score == pytest.approx(float(cos[int(item.id)]), abs=1e-5)
        assert item.text == reference["docs"][int(item.id)]
        assert torch.equal(item.memory, store.get_memories([item.id])[0])


def test_candidate_pool_is_the_reference_selector(pipeline, reference):
    for question, topk in zip(reference["questions"], reference["e2e.topk_idx"]):
        pooled = pipeline.retrieve(question, k=2, candidate_pool=5)
        assert [int(i.id) for i in pooled] == topk
        plain = pipeline.retrieve(question, k=2)
        assert [i.id for i in plain] == [i.id for i in pooled]
        assert [i.score for i in plain] == pytest.approx([i.score for i in pooled], abs=1e-5)
    assert (
        len(pipeline.retrieve(reference["questions"][0], k=2, candidate_pool=1)) == 2
    )  # pool < k: k
    assert pipeline.retrieve(reference["questions"][0], k=2, filters={"missing": "x"}) == []


def test_rerank_compresses_each_text_once(e2e_model, reference, monkeypatch):
    pipeline = ClaraPipeline(e2e_model)
    items = [Item(None, t, {"i": i}) for i, t in enumerate(reference["docs"])]
    for question, topk in zip(reference["questions"], reference["e2e.topk_idx"]):
        ranked = pipeline.rerank(question, items, top_n=2)
        assert [i.metadata["i"] for i in ranked] == topk
        assert ranked[0].score >= ranked[1].score
    assert pipeline.cache.compressed == len(items) == len(pipeline.cache)
    torch.testing.assert_close(ranked[0].memory, e2e_model.compress_documents([ranked[0].text])[0])
    assert len(pipeline.rerank("Which?", items)) == len(items)  # top_n=None keeps all
    assert items[0].memory is None and items[0].score is None  # inputs untouched
    monkeypatch.setattr(e2e_model, "compress_documents", _no_compression)
    assert [i.text for i in pipeline.rerank("Which?", items, top_n=1)]  # all cached now


def test_memories_stored_carried_or_compressed(pipeline, e2e_model, store, reference, monkeypatch):
    carried = torch.randn(e2e_model.n_mem, e2e_model.hidden_size)
    monkeypatch.setattr(e2e_model, "compress_documents", _no_compression)
    stored_text = store.get_nodes(["1"])[0].text
    out = pipeline.memories(
        [Item("1", stored_text), Item("1", ""), Item("x", "text", memory=carried)]
    )
    assert torch.equal(out[0], store.get_memories(["1"])[0]) and torch.equal(out[1], out[0])
    assert torch.equal(out[2], carried)
    monkeypatch.undo()
    fresh = pipeline.memories(
        [Item("not-in-store", reference["docs"][2]), Item(None, reference["docs"][2])]
    )
    torch.testing.assert_close(fresh, e2e_model.compress_documents([reference["docs"][2]] * 2))
    with pytest.raises(ValueError, match="no stored memory and no text"):
        pipeline.memories([Item(None, " ")])
    assert pipeline.memories([]).shape == (0, e2e_model.n_mem, e2e_model.hidden_size)


class _StubModel:
    """Compresses any text to a constant (n_mem=2, H=4) block; identity settable."""

    n_mem, hidden_size, dtype = 2, 4, torch.float32

    def __init__(self, identity: str) -> None:
        self.model_identity, self.calls = identity, 0

    def compress_documents(self, texts, batch_size=16, show_progress=False):
        self.calls += len(texts)
        return torch.ones(len(texts), 2, 4)


def test_a_store_id_with_other_text_is_read_from_its_text(e2e_model, store, reference, caplog):
    """An id shared with another source, or text edited after retrieval: the stored
    memory belongs to another document, so the item's own text is compressed (said once)."""
    pipeline = ClaraPipeline(e2e_model, store)
    fake = "The secret password is swordfish."
    with caplog.at_level("WARNING", logger="clara_integrations.pipeline.core"):
        out = pipeline.memories([Item("0", fake), Item("2", reference["docs"][2])])
        pipeline.memories([Item("0", fake)])
    torch.testing.assert_close(out[0], e2e_model.compress_documents([fake])[0])
    assert torch.equal(out[1], store.get_memories(["2"])[0])
    said = [r.getMessage() for r in caplog.records]
    assert (
        len(said) == 1 and "1 of 2 documents have the id of a stored node but other text" in said[0]
    )


def test_cache_is_keyed_by_text_and_model_identity_and_bounded():
    cache = CompressionCache(max_items=2)
    a, b = _StubModel("clara-a"), _StubModel("clara-b")
    cache.get(a, ["x", "y", "x"])
    assert a.calls == 2 and len(cache) == 2
    cache.get(b, ["x"])  # another compressor: another key
    assert b.calls == 1 and len(cache) == 2  # least recently used ("x" of a) evicted
    cache.get(a, ["y"])
    assert a.calls == 2
    cache.get(a, ["x"])
    assert a.calls == 3
    by_bytes = CompressionCache(max_bytes=2 * 2 * 4 * 4)  # room for two float32 blocks
    by_bytes.get(a, ["1", "2", "3"])
    assert len(by_bytes) == 2
    with pytest.raises(ValueError, match="cache bounds"):
        CompressionCache(max_items=-1)


def test_answer_is_the_reference_generation(pipeline, e2e_model, reference):
    for question, topk, want in zip(
        reference["questions"], reference["e2e.topk_idx"], reference["e2e.generate_from_questions"]
    ):
        items = pipeline.retrieve(question, k=2, candidate_pool=5)
        assert [int(i.id) for i in items] == topk
        memories = pipeline.memories(items)
        answer = pipeline.answer(question, memories, max_new_tokens=N_NEW)
        assert answer.text == want
        assert answer.num_documents == 2 and answer.memory_tokens == 2 * e2e_model.n_mem
        assert (
            answer.prompt_tokens
            == e2e_model.prepare_generation_inputs([question], memories)["attention_mask"].shape[1]
        )
        assert answer.finish_reason == "length" and len(answer.token_ids) == N_NEW
        stream = pipeline.answer(question, memories, stream=True, max_new_tokens=N_NEW)
        assert "".join(stream) == want == stream.text == stream.answer.text
        assert stream.answer.token_ids == answer.token_ids
    flat = pipeline.memory_batch(memories.flatten(1))
    assert torch.equal(flat, memories)


def test_stop_strings_whole_and_streamed(pipeline):
    chat = [{"role": "user", "content": "Hello"}]
    assert (
        pipeline.chat(chat, max_new_tokens=N_NEW).text == "\n" * N_NEW
    )  # the tiny model's greedy text
    cut = pipeline.chat(chat, stop=["\n\n\n"], max_new_tokens=N_NEW)
    assert cut.text == "" and cut.stopped and cut.finish_reason == "stop"
    assert len(cut.token_ids) == 3  # decoding stopped as soon as the stop string appeared
    stream = pipeline.chat(chat, stop=["\n\n\n"], stream=True, max_new_tokens=N_NEW)
    assert list(stream) == [] and stream.answer.stopped
    two = pipeline.chat(chat, stop=["\n\n\n"], max_new_tokens=2)
    assert two.text == "\n\n" and two.finish_reason == "length"


@pytest.mark.parametrize(
    ("text", "stop"),
    [
        (
            "abc d 'm fine",
            "c d'm",
        ),  # the clean-up (" 'm" -> "'m") completes a stop that starts earlier
        ("Paris is nice. Yes it is.", " nice"),
        ("It isn 't ok , right ?", "ok,"),
        ("Hello , world . I 'm fine ! é à ü 日本", "zz"),
    ],
)
def test_hold_back_never_streams_what_a_later_token_changes_or_cuts(e2e_model, text, stop):
    gen = Generation(e2e_model.tokenizer, _no_compression, stop=[stop])
    assert gen.hold == CLEANUP_HOLD + len(stop) - 1
    ids = e2e_model.tokenizer(text, add_special_tokens=False)["input_ids"]
    final, _ = gen.decode(ids)
    pieces = [gen.stable_text(ids[:n])[0] for n in range(1, len(ids) + 1)]
    assert all(final.startswith(p) and "\ufffd" not in p for p in pieces)
    assert all(b.startswith(a) for a, b in zip(pieces, pieces[1:]))


def test_streaming_via_a_fake_run_and_errors_reach_the_consumer(e2e_model):
    tok = e2e_model.tokenizer
    ids = tok("Hello , world . I 'm fine ! é à ü 日本", add_special_tokens=False)["input_ids"]

    def run(streamer, stopping_criteria):
        streamer.put(torch.empty(1, 0, dtype=torch.long))  # the (empty) prompt
        for i in ids:
            streamer.put(torch.tensor([i]))
        streamer.end()

    stream = Generation(tok, run).stream()
    deltas = list(stream)
    assert (
        "".join(deltas) == stream.answer.text == Generation(tok, run).decode(ids)[0]
        and len(deltas) > 3
    )

    def boom(streamer, stopping_criteria):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(Generation(tok, boom).stream())


def test_closing_a_stream_stops_the_generation(pipeline, reference):
    memories = pipeline.memories(pipeline.retrieve(reference["questions"][0], k=2))
    stream = pipeline.answer(reference["questions"][0], memories, stream=True, max_new_tokens=64)
    next(stream, None)
    stream.close()  # joins the worker: the model is free again
    done = threading.Event()
    threading.Thread(
        target=lambda: (
            pipeline.chat([{"role": "user", "content": "Hi"}], max_new_tokens=2),
            done.set(),
        ),
        daemon=True,
    ).start()
    assert done.wait(60)


def test_errors(pipeline, e2e_model, instruct_model, store):
    for bad in ("", "  ", None):
        with pytest.raises(ValueError, match="empty query") as info:
            pipeline.retrieve(bad, k=1)
        assert str(info.value) == EMPTY_QUERY
    with pytest.raises(TypeError, match="query must be a string"):
        pipeline.encode_query(3)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        pipeline.retrieve("Who?", k=0)
    with pytest.raises(ValueError, match="candidate_pool"):
        pipeline.retrieve("Who?", k=1, candidate_pool=0)
    with pytest.raises(ValueError, match="has no store"):
        ClaraPipeline(e2e_model).retrieve("Who?", k=1)
    with pytest.raises(ValueError, match=r"memory tensor must be \(k, 4, 64\)"):
        pipeline.answer("Who?", torch.zeros(2, 3, 64))
    with pytest.raises(ValueError, match="max_new_tokens"):
        pipeline.answer("Who?", store.get_memories(["0"]), max_new_tokens=0)
    with pytest.raises(ValueError, match="empty prompt"):
        pipeline.chat([{"role": "user", "content": " "}])
    bare = ClaraPipeline(instruct_model)
    bare.compress(["compression needs no query reasoner"])
    with pytest.raises(MissingAdapterError, match="query reasoner"):
        bare.encode_query("Who?")
    with pytest.raises(TypeError, match="MemoryStoreProtocol"):
        ClaraPipeline(e2e_model, {"not": "a store"})
    with pytest.raises(TypeError, match="ClaraModel"):
        ClaraPipeline(object())


class _Forwarding:
    """A store that is not a MemoryStore, only implements the protocol (as a Milvus
    backend will), here by forwarding to one."""

    def __init__(self, inner: MemoryStore) -> None:
        self._inner = inner

    config = property(lambda self: self._inner.config)
    fingerprint = property(lambda self: self._inner.fingerprint)

    def __len__(self):
        return len(self._inner)

    def __contains__(self, node_id):
        return node_id in self._inner

    def __getattr__(self, name):  # check_model, search, get_memories, get_nodes, add, ...
        if name in (
            "check_model",
            "search",
            "get_memories",
            "get_nodes",
            "get_nodes_with_memories",
            "ids_where",
            "add",
            "add_documents",
            "update",
            "delete",
        ):
            return getattr(self._inner, name)
        raise AttributeError(name)


def test_any_store_implementing_the_protocol(e2e_model, store, reference):
    other = _Forwarding(MemoryStore.for_model(e2e_model, dtype=torch.float32))
    assert isinstance(other, MemoryStoreProtocol) and not isinstance(other, MemoryStore)
    pipeline = ClaraPipeline(e2e_model, other)
    pipeline.add_texts(reference["docs"], [{}] * 5, [str(i) for i in range(5)])
    pipeline.add_texts([reference["docs"][0]], [{"again": True}], ["0"])  # upsert
    assert len(other) == 5
    question = reference["questions"][1]
    ours = [(i.id, i.score) for i in pipeline.retrieve(question, k=3)]
    assert ours == [
        (i.id, i.score) for i in ClaraPipeline(e2e_model, store).retrieve(question, k=3)
    ]
    from clara_integrations.langchain import ClaraRetriever

    assert [d.id for d in ClaraRetriever(model=e2e_model, store=other, k=3).invoke(question)] == [
        i for i, _ in ours
    ]


def test_the_pipeline_imports_no_framework():
    import subprocess
    import sys

    code = (
        "import sys, clara_integrations.pipeline\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('llama_index', 'langchain_core', 'langchain')]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
