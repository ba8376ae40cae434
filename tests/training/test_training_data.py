"""Reading the reference's JSONL formats (spec §5.2) with line-numbered errors."""

from __future__ import annotations

import pytest

from training.data import DataError, Example, load_examples, parse_record, summarize_issues
from training.stages import equalize_candidates, fit_example


def test_field_resolution_priority():
    ex = parse_record(
        {"question": "Q?", "answer": "A", "answers": ["B"], "docs": ["d1"], "context": ["ignored"]}
    )
    assert (ex.question, ex.target, ex.docs) == ("Q?", "A", ("d1",))
    ex = parse_record({"question": "Q?", "golden_answers": ["G", "H"], "content": ["d"]})
    assert ex.target == "G" and ex.answers == ("G", "H")
    ex = parse_record(
        {
            "question": "Q?",
            "answers": ["x", "y"],
            "docs": [{"title": "T", "text": "body"}, "p"],
            "gold": [1],
        }
    )
    assert ex.docs == ("T\nbody", "p") and ex.pos_index == (1,) and ex.target == "x"


def test_stage1_rows():
    qa = parse_record(
        {"data_type": "qa", "question": ["q1", "q2"], "answers": ["a1", "a2"], "docs": ["d"]}
    )
    assert qa.questions == ("q1", "q2") and qa.targets == ("a1", "a2")
    para = parse_record({"data_type": "paraphrase", "answers": ["restated"], "docs": ["d"]})
    assert para.data_type == "paraphrase" and para.target == "restated"
    assert parse_record(para.to_json()) == Example(
        ("d",), (), ("restated",), "paraphrase", (), ("restated",)
    )
    with pytest.raises(DataError, match="2 questions but 1 answers"):
        parse_record({"question": ["q1", "q2"], "answers": ["a1"], "docs": ["d"]}, "f.jsonl:3")


@pytest.mark.parametrize(
    "row, why",
    [
        ({"question": "q", "answer": "a"}, "docs"),
        ({"question": "q", "docs": ["d"]}, "answer"),
        ({"question": "q", "answer": "a", "docs": ["d"], "pos_index": [3]}, "pos_index"),
        ({"question": "", "answer": "a", "docs": ["d"]}, "question is empty"),
    ],
)
def test_bad_rows_name_origin(row, why):
    with pytest.raises(DataError, match=rf"^data.jsonl:7: .*{why}"):
        parse_record(row, "data.jsonl:7")


def test_malformed_lines_reported_with_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"question": "q", "answer": "a", "docs": ["d"]}\n{not json\n\n{"question": "q"}\n',
        encoding="utf-8",
    )
    result = load_examples([path])
    assert len(result.examples) == 1
    assert result.issues[0].startswith(f"{path}:2: not valid JSON")
    assert result.issues[1].startswith(f"{path}:4: ")
    with pytest.raises(DataError, match=rf"{path}:2"):
        load_examples([path], strict=True)


def test_reference_pretrain_file_loads(shared_dir):
    result = load_examples([shared_dir / "data" / "clara_pretrain_example.jsonl"])
    assert not result.issues and len(result.examples) == 364
    assert all(fit_example(ex, "compress", 1) is ex for ex in result.examples)


def test_fit_example_keeps_positives():
    ex = parse_record(
        {"question": "q", "answers": ["a"], "docs": [f"d{i}" for i in range(10)], "gold": [7]},
        "x:1",
    )
    fitted = fit_example(ex, "instruct", 3)
    assert fitted.docs == ("d0", "d1", "d7") and fitted.pos_index == (2,)
    with pytest.raises(DataError, match="x:1: has 10 documents"):
        fit_example(ex, "compress", 1)
    short = parse_record(
        {"question": "q", "answers": ["a"], "docs": ["d0", "d1", "d2"], "gold": [2]}
    )
    even = equalize_candidates([ex, short])
    assert [len(e.docs) for e in even] == [3, 3] and even[0].docs[even[0].pos_index[0]] == "d7"


GOOD = b'{"question": "q", "answer": "a", "docs": ["d"]}\n'


def test_invalid_utf8_and_lone_surrogate_lines_are_skipped_with_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    lone = b'{"question": "q\\ud800", "answer": "a", "docs": ["d"]}\n'  # JSON escape, half a pair
    pair = b'{"question": "q\\ud83d\\ude00", "answer": "a", "docs": ["d"]}\n'  # an emoji: fine
    path.write_bytes(
        GOOD + b'{"question": "caf\xe9", "answer": "a", "docs": ["d"]}\n' + lone + pair
    )
    result = load_examples([path])
    assert [ex.origin for ex in result.examples] == [f"{path}:1", f"{path}:4"]
    assert result.issues[0].startswith(f"{path}:2: not valid UTF-8 (byte 0xe9")
    assert result.issues[1].startswith(f"{path}:3: holds a lone surrogate")
    with pytest.raises(DataError, match=rf"^{path}:2: not valid UTF-8"):
        load_examples([path], strict=True)
    path.write_bytes(GOOD + lone)
    with pytest.raises(DataError, match=rf"^{path}:2: holds a lone surrogate"):
        load_examples([path], strict=True)


def test_byte_order_mark_keeps_line_1(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD + GOOD)
    result = load_examples([path], strict=True)
    assert len(result.examples) == 2 and not result.issues


def test_empty_file_is_reported_and_fatal_when_strict(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n  \n")
    assert load_examples([empty]).issues == [
        f"{empty}:1: the file is empty (no JSON lines); pass the right file"
    ]
    with pytest.raises(DataError, match=rf"^{empty}:1: the file is empty"):
        load_examples([empty], strict=True)


def test_gold_answer_of_the_reference_readme_is_read_last():
    ex = parse_record({"question": "Q?", "docs": ["d"], "gold_answer": "G"})
    assert ex.target == "G" and ex.answers == ("G",)
    ex = parse_record({"question": "Q?", "docs": ["d"], "gold_answer": "G", "answer": "teacher's"})
    assert ex.target == "teacher's"  # stage1_2 debug data: `answer` is the target (spec §5.2)


def test_summary_counts_reasons_and_shows_the_first():
    issues = [
        f"f.jsonl:{n}: not valid UTF-8 (byte 0xff at byte 1 of the line); re-save"
        for n in (2, 3, 4)
    ]
    issues.append("f.jsonl:9: needs 'answer' (string), 'answers' or ...")
    text = summarize_issues(issues, first=2)
    assert text.splitlines() == [
        "skipped 4 (3 not valid UTF-8, 1 needs 'answer'); first:",
        f"  {issues[0]}",
        f"  {issues[1]}",
        "  ... and 2 more",
    ]
