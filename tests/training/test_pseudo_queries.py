"""Label-free retrieval rows: crops of a document point back at it, negatives by BM25."""

from __future__ import annotations

import random

from training.data import parse_record
from training.pseudo_queries import crop, pseudo_query_rows, retrieval_rows

DOCS = [
    "Volcanoes erupt molten rock called lava when pressure builds under the crust of Earth.",
    "Lava flows from volcanoes cool into basalt, a dark rock found on Iceland and Hawaii.",
    "Tea plantations in Assam produce a strong black tea grown in the valley of a river.",
    "The river Thames flows through London and reaches the North Sea at its estuary.",
]


def test_crop_stays_inside_the_window_and_the_length_bounds():
    rng = random.Random(1)
    text = " ".join(f"w{i}" for i in range(500))
    for _ in range(50):
        span = crop(text, rng, 4, 9, window_words=30).split()
        assert 4 <= len(span) <= 9
        assert all(int(w[1:]) < 30 for w in span)
    assert crop("too short", rng, 4, 9, 30) is None


def test_pseudo_queries_point_at_their_document_among_bm25_negatives():
    rows = pseudo_query_rows(DOCS + [DOCS[0]], per_doc=2, n_candidates=3, min_words=4, seed=3)
    assert len(rows) == 2 * len(DOCS)  # the duplicate document is used once
    for row in rows:
        ex = parse_record(row)  # the training data reader accepts the rows
        positive = ex.docs[ex.pos_index[0]]
        assert row["question"] in positive and len(set(ex.docs)) == 3
    assert rows == pseudo_query_rows(DOCS, per_doc=2, n_candidates=3, min_words=4, seed=3)


def test_retrieval_rows_mine_the_lexical_neighbour():
    rows = retrieval_rows([("Which rock do volcanoes make?", DOCS[0])], DOCS, n_candidates=2)
    docs, pos = rows[0]["docs"], rows[0]["pos_index"][0]
    assert docs[pos] == DOCS[0] and docs[1 - pos] == DOCS[1]  # the other volcano page


def test_a_document_holding_the_query_is_not_a_negative():
    docs = [DOCS[0], DOCS[0] + " It also erupts ash.", DOCS[2], DOCS[3]]
    query = "molten rock called lava when pressure builds"
    row = retrieval_rows([(query, docs[0])], docs, n_candidates=3)[0]
    assert docs[1] not in row["docs"]  # it holds the span word for word: a false negative


def test_title_queries_are_deterministic_and_skip_groups_without_negatives():
    from training.pseudo_queries import title_query_rows

    group = [(f"Title {i}", f"Text {i}.") for i in range(5)] + [("Title 0", "A duplicate.")]
    rows = title_query_rows([group, group[:2]], per_group=3, seed=7)
    assert rows == title_query_rows([group, group[:2]], per_group=3, seed=7)
    assert len(rows) == 3  # the two-title group has no negative left: skipped
    for row in rows:
        assert len(row["docs"]) == 5 and "A duplicate." not in "".join(row["docs"])
        a, b = row["pos_index"]
        assert a < b and all(row["docs"][i].split("\n")[0] in row["question"] for i in (a, b))
