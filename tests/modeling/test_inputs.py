"""Bad input: clear errors naming the problem, empty inputs give empty results."""

from __future__ import annotations

import pytest
import torch

from clara_integrations import MissingAdapterError

DOCS = ["Weldenia is a genus of flowering plants.", "The Eiffel Tower is in Paris."]


def test_empty_inputs_give_empty_results(e2e_model):
    assert e2e_model.compress_documents([]).shape == (0, 4, 64)
    assert e2e_model.encode_queries([]).shape == (0, 256)
    answers, idx = e2e_model.generate_from_questions([], documents=[])
    assert answers == [] and idx.shape[0] == 0
    assert e2e_model.generate_from_text([], []) == []


@pytest.mark.parametrize(
    "bad, index", [(["ok", ""], 1), (["ok", "   "], 1), ([None, "ok"], 0), ([3], 0)]
)
def test_bad_document_names_its_index(e2e_model, bad, index):
    with pytest.raises(ValueError, match=f"document {index}"):
        e2e_model.compress_documents(bad)


def test_single_string_is_rejected(e2e_model):
    with pytest.raises(TypeError, match="list"):
        e2e_model.compress_documents("a single document")


def test_mismatched_question_and_document_lists(e2e_model):
    with pytest.raises(ValueError, match="2 questions but 1 document lists"):
        e2e_model.generate_from_questions(["a?", "b?"], documents=[DOCS])
    with pytest.raises(ValueError, match="same, non-zero number of documents"):
        e2e_model.generate_from_text(["a?", "b?"], [DOCS, DOCS[:1]])
    with pytest.raises(ValueError, match="only 2 candidates"):
        e2e_model.generate_from_questions(["a?"], documents=[DOCS], k=3)


def test_overlong_document_truncates_like_reference(e2e_model):
    long_doc = " ".join(["word"] * 500)
    packed = e2e_model.compress_documents([long_doc])
    padded = e2e_model.compress_documents([long_doc], reference_padding=True)
    assert (packed - padded).abs().max() <= 1e-4
    # Truncation keeps only the first doc_max_length + 1 text tokens, so extra text is ignored.
    longer = e2e_model.compress_documents([long_doc + " tail words that are cut"])
    assert torch.equal(packed, longer)


def test_mixed_lengths_batch_matches_one_by_one(e2e_model):
    docs = ["short", " ".join(["medium"] * 20), " ".join(["long"] * 200)]
    together = e2e_model.compress_documents(docs, batch_size=3)
    alone = torch.cat([e2e_model.compress_documents([d]) for d in docs])
    assert (together - alone).abs().max() <= 1e-4


def test_retrieval_without_query_reasoner_names_the_adapter(instruct_model):
    with pytest.raises(MissingAdapterError, match="query_reasoner_adapter"):
        instruct_model.encode_queries(["Who?"])
    with pytest.raises(MissingAdapterError, match="query_reasoner_adapter"):
        instruct_model.generate_from_questions(["Who?"], documents=[DOCS], k=1)


def test_wrong_memory_shape(e2e_model):
    with pytest.raises(ValueError, match="memories must be"):
        e2e_model.prepare_generation_inputs(["Who?"], torch.zeros(2, 3, 64))
    with pytest.raises(ValueError, match="cannot be split evenly"):
        e2e_model.prepare_generation_inputs(["a?", "b?"], torch.zeros(3, 4, 64))


def test_prefill_is_prompt_plus_memory_slots(e2e_model):
    memories = e2e_model.compress_documents(DOCS)
    inputs = e2e_model.prepare_generation_inputs(["Where is it?"], memories)
    prompt = e2e_model._answer_prompts(["Where is it?"], 2)[0]
    prompt_ids = e2e_model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # The decoder input is exactly the prompt: no document text, one slot per memory vector.
    assert inputs["input_ids"][0].tolist() == prompt_ids
    assert DOCS[0] not in prompt and "Eiffel" not in prompt
    mem_ids = set(e2e_model.special.mem_token_ids)
    assert sum(t in mem_ids for t in prompt_ids) == 2 * e2e_model.n_mem
    for j in range(2):  # each slot holds the memory vectors, not token embeddings
        start = prompt_ids.index(e2e_model.special.mem_token_ids[0]) + j * (e2e_model.n_mem + 1)
        assert torch.equal(inputs["inputs_embeds"][0, start : start + e2e_model.n_mem], memories[j])


def test_concurrent_calls_give_serial_results(e2e_model):
    from concurrent.futures import ThreadPoolExecutor

    serial_docs = e2e_model.compress_documents(DOCS)
    serial_queries = e2e_model.encode_queries(["Where?", "Who?"])
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(e2e_model.compress_documents, DOCS)
            if i % 2
            else pool.submit(e2e_model.encode_queries, ["Where?", "Who?"])
            for i in range(8)
        ]
        results = [f.result() for f in futures]
    for i, result in enumerate(results):
        assert torch.equal(result, serial_docs if i % 2 else serial_queries)


@pytest.mark.parametrize("k", [0, -1, 1.5, "2", True])
def test_generate_rejects_k_that_is_not_a_positive_int(e2e_model, k):
    with pytest.raises(ValueError, match=r"^k must be a positive int .*generation_top_k"):
        e2e_model.generate_from_questions(["a?"], documents=[DOCS], k=k, max_new_tokens=1)


def test_generate_k_none_uses_the_config_default(e2e_model):
    _, idx = e2e_model.generate_from_questions(["a?"], documents=[DOCS], k=None, max_new_tokens=1)
    assert idx.shape == (1, e2e_model.config.generation_top_k)


def test_a_prompt_past_the_decoder_cap_is_refused_not_cut(e2e_model):
    """The reference cuts answer prompts at 1024 tokens on the right: the question and the
    assistant turn go first, and the model answers half a question."""
    memory = e2e_model.compress_documents(DOCS[:1])
    question = "Who is the Eiffel Tower named after?"
    fits = e2e_model.prepare_generation_inputs([question], memory.repeat(2, 1, 1))
    assert fits["attention_mask"].sum() < 1024
    with pytest.raises(
        ValueError, match=r"prompt 0 is \d+ tokens .* above the 1024 .* fewer documents"
    ):
        e2e_model.prepare_generation_inputs(["word " * 1100 + question], memory.repeat(2, 1, 1))
    many = 1024 // (e2e_model.n_mem + 1)  # memory slots alone fill the cap
    with pytest.raises(ValueError, match=rf"{many} documents x {e2e_model.n_mem + 1}"):
        e2e_model.prepare_generation_inputs([question], memory.repeat(many, 1, 1))
    with pytest.raises(ValueError, match="above the 1024"):
        e2e_model.generate_from_text(["word " * 1100 + question], [DOCS[:1]], max_new_tokens=1)
