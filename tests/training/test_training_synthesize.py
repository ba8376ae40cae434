"""Chunking, the offline teacher, BM25 negatives and the written JSONL."""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import threading

import pytest
from transformers import AutoTokenizer

from clara_integrations.pipeline.bm25 import BM25
from training.data import DataError, load_examples
from training.self_teacher import SelfTeacher
from training.synthesize import SynthesisConfig, chunk_text, read_documents, synthesize
from training.teachers import HFTeacher, OfflineTeacher, _parse_pairs, make_teacher


def test_bm25_ranks_overlap_first():
    index = BM25(["cats purr", "dogs bark at cats", "stock markets fell"])
    assert index.top("why do cats purr", 2) == [0, 1]
    assert index.top("cats", 3, exclude=frozenset({0})) == [1]


def test_offline_teacher_cloze():
    pairs = OfflineTeacher().qa_pairs(
        "Travel is booked in Concur. The per diem was raised in 2019 for staff.", 5
    )
    assert ('Complete the statement: "The per diem was raised in ____ for staff."', "2019") in pairs
    assert _parse_pairs("Q: Who?\nA: Ann\nnoise\nQ: When?\nA: 1999", 5) == [
        ("Who?", "Ann"),
        ("When?", "1999"),
    ]


def test_documents_skip_undecodable_lines_with_one_summary_warning(tmp_path, caplog):
    (tmp_path / "bom.md").write_bytes(b"\xef\xbb\xbf# Leave\nAsk your supervisor.\n")
    (tmp_path / "bad.txt").write_bytes(
        b"Good line.\r\nLatin-1 caf\xe9 line.\r\nAnother good line.\r\n"
    )
    (tmp_path / "docs.jsonl").write_bytes(
        b'\xef\xbb\xbf{"title": "T", "text": "first line survives the BOM"}\n'
        b'{"text": "caf\xe9"}\n{"text": "lone \\udc00 half"}\n{"title": "no text"}\n{"text": "ok"}\n'
    )
    (tmp_path / "empty.md").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="training.synthesize"):
        docs = dict(read_documents(tmp_path))
    assert docs[str(tmp_path / "bom.md")] == "# Leave\nAsk your supervisor.\n"
    assert docs[str(tmp_path / "bad.txt")] == "Good line.\nAnother good line.\n"
    assert docs[f"{tmp_path / 'docs.jsonl'}:1"] == "# T\n\nfirst line survives the BOM"
    assert docs[f"{tmp_path / 'docs.jsonl'}:5"] == "ok" and len(docs) == 4
    [warning] = [r.getMessage() for r in caplog.records]  # one warning, not one per line
    assert (
        "skipped 5 (2 not valid UTF-8, 1 holds a lone surrogate, 1 needs a non-empty string 'text', "
        "1 the file is empty)" in warning
    )
    assert f"{tmp_path / 'bad.txt'}:2: not valid UTF-8" in warning
    with pytest.raises(DataError, match=rf"^{tmp_path / 'bad.txt'}:2: not valid UTF-8"):
        dict(read_documents(tmp_path, strict=True))


def test_documents_none_usable_names_the_reasons(tmp_path):
    (tmp_path / "docs.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(
        FileNotFoundError, match=rf"(?s)no usable .*{tmp_path}.*docs.jsonl:1: not valid UTF-8"
    ):
        dict(read_documents(tmp_path))


def test_chunks_fit_the_budget(tiny_base):
    tok = AutoTokenizer.from_pretrained(tiny_base)
    text = "\n\n".join(
        " ".join(f"word{i}" for i in range(p, p + 40)) + "." for p in range(0, 400, 40)
    )
    chunks = chunk_text(text, tok, 64)
    assert len(chunks) > 3
    assert all(len(tok(c, add_special_tokens=False)["input_ids"]) <= 64 for c in chunks)
    assert "word0" in chunks[0] and "word399" in chunks[-1]


def test_synthesize_writes_every_stage(tiny_base, tiny_data, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_base)
    cfg = SynthesisConfig(doc_max_length=64, num_candidates=6, instruct_k=3, eval_fraction=0.2)
    rows = synthesize(tiny_data["docs"], tmp_path, tok, OfflineTeacher(), cfg, show_progress=False)
    for name in ("compress", "instruct", "retrieval", "e2e", "eval", "chunks"):
        assert (tmp_path / f"{name}.jsonl").is_file()
        assert rows[name], name
    assert {r["data_type"] for r in rows["compress"]} == {"qa", "paraphrase"}
    chunks = {c["text"] for c in rows["chunks"]}
    for row in rows["e2e"]:
        assert len(row["docs"]) == 6 and set(row["docs"]) <= chunks
        negatives = [d for i, d in enumerate(row["docs"]) if i not in row["pos_index"]]
        assert all(row["answer"].lower() not in d.lower() for d in negatives)
    assert all(len(r["docs"]) == 3 for r in rows["instruct"])
    loaded = load_examples([tmp_path / "e2e.jsonl", tmp_path / "compress.jsonl"])
    assert not loaded.issues
    assert json.loads((tmp_path / "manifest.json").read_text())["chunks"] == len(rows["chunks"])
    # label-free rows: a span of a training chunk points at that chunk, never an eval chunk
    crops = [r for r in rows["retrieval"] if r["answer"] == ""]
    held = {c["text"] for c in rows["chunks"] if c["id"] in {r["chunk"] for r in rows["eval"]}}
    assert crops and len(rows["retrieval"]) == len(rows["e2e"]) + len(crops)
    for row in crops:
        positive = row["docs"][row["pos_index"][0]]
        assert row["question"] in " ".join(positive.split())  # words of the chunk, re-spaced
        assert positive in chunks and positive not in held
        assert len(row["docs"]) == 6
    assert not load_examples([tmp_path / "retrieval.jsonl"]).issues


@contextlib.contextmanager
def _stub_endpoint(reply):
    """A local OpenAI-compatible endpoint: `reply(request_json, headers)` -> (status, body)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            status, body = reply(
                json.loads(self.rfile.read(int(self.headers["Content-Length"]))), self.headers
            )
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield make_teacher(
            "openai",
            "stub-model",
            f"http://127.0.0.1:{server.server_port}/v1",
            api_key_env="CLARA_TEST_NO_SUCH_KEY",
        )
    finally:
        server.shutdown()


def test_openai_compatible_teacher_against_local_stub():
    seen = {}

    def reply(request, headers):
        seen.update(request, auth=headers.get("Authorization"))
        body = json.dumps({"choices": [{"message": {"content": "Q: Who signs?\nA: The director"}}]})
        return 200, body.encode()

    with _stub_endpoint(reply) as teacher:
        assert teacher.qa_pairs("The director signs all forms.", 3) == [
            ("Who signs?", "The director")
        ]
    assert seen["model"] == "stub-model" and seen["temperature"] == 0 and seen["auth"] is None


def test_hf_teacher_falls_back_when_reply_unparseable(tiny_base):
    teacher = HFTeacher(str(tiny_base), device="cpu", max_new_tokens=4)  # random weights: gibberish
    pairs = teacher.qa_pairs("Leave requests go to the supervisor in 2020 through the portal.", 2)
    assert pairs and teacher.fallbacks == 1


def test_openai_teacher_retries_transient_errors_only():
    calls = []

    def reply(request, headers):
        calls.append(request)  # a transient failure first, then a malformed reply
        return (503, b"") if len(calls) == 1 else (200, b'{"not": "a completion"}')

    with _stub_endpoint(reply) as teacher, pytest.raises(RuntimeError, match="not an OpenAI"):
        teacher.complete("hi")
    assert len(calls) == 2  # the 503 was retried, the malformed reply was not


def test_self_teacher_keeps_answers_that_contain_the_cloze_span(tiny_base):
    teacher = SelfTeacher(str(tiny_base), device="cpu", max_new_tokens=3, show_progress=False)
    assert teacher._target("2019", "In 2019.") == "In 2019."  # agrees: the teacher's words
    assert teacher._target("2019", "In 2018.") == "2019"  # wrong: the span is the label
    assert teacher._target("2019", "it was " + "very " * 8 + "much 2019") == "2019"  # rambles
    assert teacher._target("the", "the") == "the"  # a span normalised away is not a check
    assert teacher.stats() == {"asked": 4, "agreed": 1}


def test_self_teacher_answers_every_chunk_in_one_batched_pass(tiny_base, monkeypatch):
    teacher = SelfTeacher(str(tiny_base), device="cpu", max_new_tokens=2, show_progress=False)
    calls = []
    answer = teacher.answer
    monkeypatch.setattr(teacher, "answer", lambda q, t: calls.append(len(q)) or answer(q, t))
    texts = [
        "Travel is booked in Concur. The per diem was raised in 2019 for all staff.",
        "The handbook was written in 2015 by the 18F team in Washington.",
    ]
    teacher.prepare(texts, 2)
    cloze = [OfflineTeacher().qa_pairs(t, 2) for t in texts]
    assert calls == [sum(map(len, cloze))]  # one call for every question of every chunk
    for text, expected in zip(texts, cloze):
        pairs = teacher.qa_pairs(text, 2)
        assert [q for q, _ in pairs] == [q for q, _ in expected]
        assert all(span in a or a == span for (_, a), (_, span) in zip(pairs, expected))
    assert calls == [sum(map(len, cloze))]  # read from the prepared answers
    assert teacher.stats()["asked"] == sum(map(len, cloze))


def test_synthesize_with_the_self_teacher_records_its_agreement(tiny_base, tiny_data, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_base)
    teacher = make_teacher("self", str(tiny_base), show_progress=False)
    rows = synthesize(
        tiny_data["docs"],
        tmp_path,
        tok,
        teacher,
        SynthesisConfig(doc_max_length=64),
        show_progress=False,
    )
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["teacher_stats"]["asked"] == teacher.asked > 0
    assert len(rows["instruct"]) > 0


def test_a_question_asked_of_several_chunks_trains_no_retrieval(tiny_base, tmp_path):
    """Every document opens with the same template sentence, so its cloze question is the
    same for all: no single positive, so it is kept out of retrieval and e2e."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, body in (
        ("a", "Alice Smith founded Acme in 1990."),
        ("b", "Bob Jones sold Zeta in 2004."),
    ):
        (docs / f"{name}.txt").write_text(f"This is a document about Widgets. {body}")
    rows = synthesize(
        docs,
        tmp_path / "out",
        AutoTokenizer.from_pretrained(tiny_base),
        OfflineTeacher(),
        SynthesisConfig(doc_max_length=64, eval_fraction=0, crops_per_chunk=0),
        show_progress=False,
    )
    shared = 'Complete the statement: "This is a document about ____."'
    assert sum(r["question"] == shared for r in rows["instruct"]) == 2
    assert rows["e2e"] and all(r["question"] != shared for r in rows["e2e"] + rows["retrieval"])
