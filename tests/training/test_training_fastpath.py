"""The fast training step computes the legacy step's losses and gradients, more cheaply."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from clara_integrations import ClaraConfig, ClaraModel
from clara_integrations.errors import DocumentTruncatedWarning
from clara_integrations.modeling.adapters import DECODER_ADAPTER, ENCODER_ADAPTER, QUERY_ADAPTER
from tests.training.conftest import TINY_FLAGS, retrieval_run_flags
from training.collate import Collator
from training.data import load_examples
from training.fastpath import (
    MemoryRows,
    ScaledCollate,
    StepScales,
    _FastDropout,
    auto_micro_batch,
    bucket_order,
    cast_frozen_weights,
)
from training.losses import objective_for_stage
from training.memory_cache import MemoryCache
from training.query_bank import QueryBank
from training.stages import fit_example, prepare_model_for_stage

K = 2


@pytest.fixture(scope="module")
def model(tiny_base):
    config = ClaraConfig.for_training(
        str(tiny_base), doc_max_length=64, compr_rate=16, lora_r=4, generation_top_k=K
    )
    torch.manual_seed(0)
    model = ClaraModel.from_base(
        tiny_base,
        config,
        dtype=torch.float32,
        adapters=[ENCODER_ADAPTER, DECODER_ADAPTER, QUERY_ADAPTER],
    )
    with torch.no_grad():  # non-zero LoRA B, so that every adapter changes the numbers
        for name in (ENCODER_ADAPTER, DECODER_ADAPTER, QUERY_ADAPTER):
            for p in model.adapters.parameters(name):
                p.add_(torch.randn_like(p) * 0.05)
    return model


def _items(model, stage, path, n):
    k = 1 if stage == "compress" else K
    examples = [fit_example(ex, stage, k) for ex in load_examples([path], max_examples=n).examples]
    return Collator(model.tokenizer, model.special, stage, k, 1024, 64), list(enumerate(examples))


def _loss_and_grads(model, stage, batch, fast, cache=None):
    """Loss, gradients of the trained adapters (and <MEM> rows), with dropout off."""
    params, hook = prepare_model_for_stage(
        model, stage, 1 if stage == "compress" else K, fresh_decoder=False, fast=fast
    )
    model.eval()  # no dropout: both steps must then give the same numbers
    model.zero_grad(set_to_none=True)
    out = objective_for_stage(model, stage, 0.1, fast=fast, cache=cache)(batch)
    out["loss"].backward()
    lora = params[:-1] if hook is not None else params  # the <MEM> rows come last
    grads = [p.grad.clone() for p in lora]
    if isinstance(hook, MemoryRows):
        grads.append(hook.param.grad.clone())
    elif hook is not None:
        weight = model.decoder.get_input_embeddings().weight
        grads.append(weight.grad[sorted(model.special.unique_mem_ids)].clone())
    if hook is not None:
        hook.remove()
    return out, grads


def _close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a), torch.as_tensor(b), rtol=tol, atol=tol)


@pytest.mark.parametrize("stage", ["compress", "instruct", "e2e", "retrieval"])
def test_fast_step_gives_the_legacy_losses_and_gradients(model, tiny_data, stage):
    """Label-position LM head, deduplicated documents (the same example twice), the
    `<MEM>` rows as a small parameter, cached candidates: same numbers as the legacy step."""
    path = tiny_data["compress" if stage == "compress" else "qa"]
    collator, items = _items(model, stage, path, 2)
    batch = collator(items + [(2, items[0][1])])  # a repeated example: repeated documents
    cache = None
    if stage in ("e2e", "retrieval"):
        cache = MemoryCache(model)
        cache.expect(batch["cand_texts"])
    legacy, legacy_grads = _loss_and_grads(model, stage, batch, fast=False)
    fast, fast_grads = _loss_and_grads(model, stage, batch, fast=True, cache=cache)
    for key in ("loss", "ntp", "mse"):
        assert _close(fast[key], legacy[key]), (key, fast[key], legacy[key])
    assert len(fast_grads) == len(legacy_grads)
    assert all(_close(a, b, 1e-4) for a, b in zip(fast_grads, legacy_grads))


@pytest.mark.parametrize("stage", ["e2e", "retrieval"])
def test_cached_candidates_give_the_uncached_losses(model, tiny_data, stage):
    """Training mode (dropout on the trained adapters): the cache changes nothing."""
    collator, items = _items(model, stage, tiny_data["qa"], 4)
    batch = collator(items)
    cache = MemoryCache(model)
    cache.expect([d for _, ex in items for d in ex.docs])
    prepare_model_for_stage(model, stage, K)
    model.train()
    losses = []
    for use in (cache, None, cache):
        torch.manual_seed(5)  # the same dropout masks
        losses.append(
            objective_for_stage(model, stage, 0.0, fast=True, cache=use)(batch)["loss"].item()
        )
    model.eval()
    assert len(cache) == len({d for _, ex in items for d in ex.docs})
    assert _close(losses[0], losses[1]) and losses[0] == losses[2]


def test_global_batch_scales_make_micro_batching_irrelevant(model, tiny_data):
    """One micro-batch of 2 or two of 1 (accumulated): the same global-batch mean."""
    collator, items = _items(model, "instruct", tiny_data["qa"], 2)
    labels = [collator.label_tokens(ex, pos) for pos, ex in items]
    objective = objective_for_stage(model, "instruct", 0.1, fast=True)
    prepare_model_for_stage(model, "instruct", K, fresh_decoder=False, fast=True)
    model.eval()
    whole = ScaledCollate(collator, StepScales.build(labels, 2, K, accum=1, processes=1))(items)
    split = ScaledCollate(collator, StepScales.build(labels, 2, K, accum=2, processes=1))
    parts = [objective(split([item])) for item in items]
    out = objective(whole)
    for key in ("loss", "ntp", "mse"):  # Accelerate divides each micro-batch's loss by accum
        assert _close(out[key], sum(p[key] for p in parts) / 2)
    assert whole["scale"]["ntp"] == 1 / sum(labels)


def test_bucketing_keeps_every_global_batch_and_sorts_it():
    order = [5, 1, 4, 0, 3, 2]
    lengths = {0: 10, 1: 30, 2: 20, 3: 5, 4: 40, 5: 1}
    out = bucket_order(order, 3, lengths)
    assert out == [4, 1, 5, 2, 0, 3]
    assert auto_micro_batch(8, 1000, 4096) == 4 and auto_micro_batch(6, 5000, 4096) == 1
    assert auto_micro_batch(6, 1000, 4096) == 3


def test_fast_dropout_rate_and_determinism():
    drop = _FastDropout(0.1)
    x = torch.ones(200_000)
    torch.manual_seed(1)
    a = drop(x)
    torch.manual_seed(1)
    assert torch.equal(a, drop(x))
    assert abs(float((a == 0).float().mean()) - 0.1) < 0.005
    assert torch.allclose(a[a != 0], torch.tensor(1 / 0.9))
    assert torch.equal(drop.eval()(x), x)


def test_frozen_weights_cast_and_restored_exactly(model):
    before = {n: p.detach().clone() for n, p in model.decoder.named_parameters()}
    with cast_frozen_weights(model, torch.bfloat16) as n:
        assert n > 0
        dtypes = {p.dtype for n_, p in model.decoder.named_parameters() if "lora_" not in n_}
        assert torch.bfloat16 in dtypes and torch.float32 in dtypes  # embeddings, norms stay
    assert all(torch.equal(before[n], p) for n, p in model.decoder.named_parameters())


REPO = Path(__file__).resolve().parents[2]


def _losses(out: Path) -> list[float]:
    return [
        json.loads(line)["loss"] for line in (out / "training_log.jsonl").read_text().splitlines()
    ]


def test_kill_9_mid_stage_then_resume_matches_with_the_memory_cache(
    finetune, tiny_base, tiny_data, tmp_path
):
    """A run killed inside e2e re-fills the cache on resume: the losses match exactly."""
    args = [
        "--data",
        f"e2e={tiny_data['qa']}",
        "--stages",
        "e2e",
        "--base",
        str(tiny_base),
        *TINY_FLAGS,
        "--max-steps",
        "3",
        "--train-batch-size",
        "2",
        "--micro-train-batch-size",
        "1",
        "--learning-rate",
        "1e-3",
        "--eval-max-examples",
        "0",
    ]
    assert finetune(*args, "--output", tmp_path / "full", "--quiet") == 0
    killed = [*args, "--output", str(tmp_path / "killed"), "--save-steps", "1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.finetune", *killed],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "saved checkpoint" in line:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    assert any("distinct documents once" in line for line in seen)  # the cache was used
    assert "e2e-step000001" in (tmp_path / "killed" / "checkpoints" / "LATEST").read_text()
    assert finetune(*killed, "--resume", "--quiet") == 0
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "full")  # exact, step for step


def test_legacy_step_still_trains_and_a_fast_checkpoint_needs_the_fast_step(
    finetune, tiny_base, tiny_data, tmp_path
):
    args = [
        *retrieval_run_flags(tiny_base, tiny_data),
        "--output",
        str(tmp_path / "o"),
        "--quiet",
        "--save-steps",
        "1",
    ]
    assert finetune(*args, "--legacy-step") == 0
    (tmp_path / "o" / "checkpoints" / "LATEST").write_text("00-retrieval-step000001")
    with pytest.raises(SystemExit, match="plan differs"):
        finetune(*args, "--resume")  # a legacy checkpoint resumes with --legacy-step only


def test_bank_negatives_are_every_cached_document(model, tiny_data):
    """`--retrieval-negatives bank`: the loss is InfoNCE over the whole cache. With one
    example whose candidates are the whole cache it equals the reference loss; extra
    documents in the bank only add negatives (the loss grows)."""
    collator, items = _items(model, "retrieval", tiny_data["qa"], 2)
    prepare_model_for_stage(model, "retrieval", K)
    model.eval()
    one = collator(items[:1])
    cache = MemoryCache(model)
    cache.expect(one["cand_texts"])
    reference = objective_for_stage(model, "retrieval", 0.0, fast=True, cache=cache)(one)["loss"]
    bank = objective_for_stage(model, "retrieval", 0.0, fast=True, cache=cache, negatives="bank")
    assert _close(bank(one)["loss"], reference)
    bigger = MemoryCache(model)
    bigger.expect(one["cand_texts"] + ["An unrelated page about volcanoes.", "Tea in Assam."])
    wide = objective_for_stage(model, "retrieval", 0.0, fast=True, cache=bigger, negatives="bank")
    assert wide(one)["loss"].item() > reference.item()
    # the second example's positives are its own rows, not the first example's
    both = collator(items)
    full = MemoryCache(model)
    full.expect(both["cand_texts"])
    out = objective_for_stage(model, "retrieval", 0.0, fast=True, cache=full, negatives="bank")
    queries, _ = model.encode_texts(both["questions"], QUERY_ADAPTER)
    bank_rows = torch.nn.functional.normalize(full.bank().flatten(1).float(), dim=-1)
    logits = torch.nn.functional.normalize(queries.flatten(1).float(), dim=-1) @ bank_rows.T
    logits = logits / 0.02
    expected = []
    for row, (_, ex) in enumerate(items):
        gold = full.rows([ex.docs[i] for i in ex.pos_index])
        expected.append(logits[row].logsumexp(0) - logits[row, gold].logsumexp(0))
    assert _close(out(both)["loss"], torch.stack(expected).mean(), 1e-4)


def test_query_negatives_train_the_compressor_against_every_question(model, tiny_data):
    """`--retrieval-negatives queries`: only the compressor has gradient; the loss is the
    mean of each positive document against every question of the bank and each question
    against the batch's positive documents; more questions in the bank only add negatives."""
    collator, loaded = _items(model, "retrieval", tiny_data["qa"], 8)
    first = loaded[0][1]
    other = next(
        ex for _, ex in loaded if ex.docs[ex.pos_index[0]] != first.docs[first.pos_index[0]]
    )
    items = [(0, first), (1, other)]  # two questions with different positive documents
    params, _ = prepare_model_for_stage(model, "retrieval", K, fast=True, negatives="queries")
    encoder = {id(p) for p in model.adapters.parameters(ENCODER_ADAPTER)}
    assert params and all(id(p) in encoder for p in params)
    assert not any(p.requires_grad for p in model.adapters.parameters(QUERY_ADAPTER))
    model.eval()  # no dropout: the hand computation below sees the same memory
    batch = collator(items)
    pairs = [(ex.question, [ex.docs[i] for i in ex.pos_index]) for _, ex in items]
    bank = QueryBank(model)
    bank.expect(pairs)
    objective = objective_for_stage(
        model, "retrieval", 0.0, fast=True, negatives="queries", query_bank=bank
    )
    loss = objective(batch)["loss"]
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    with torch.no_grad():
        queries, _ = model.encode_texts([q for q, _ in pairs], QUERY_ADAPTER)
        q = torch.nn.functional.normalize(queries.flatten(1).float(), dim=-1)
        docs = [pos[0] for _, pos in pairs]  # one positive each in this file
        memory, _ = model.encode_texts(docs, ENCODER_ADAPTER)
        d = torch.nn.functional.normalize(memory.flatten(1).float(), dim=-1)
        logits = d @ q.T / 0.02  # (docs, questions); document i answers question i
        doc_terms = logits.logsumexp(1) - logits.diagonal()
        query_terms = logits.T.logsumexp(1) - logits.diagonal()
        expected = 0.5 * (doc_terms + query_terms).mean()
    assert _close(loss.detach(), expected, 1e-4)
    wider = QueryBank(model)
    wider.expect(pairs + [("Which volcano erupted in 1883?", []), ("Where is tea grown?", [])])
    wide = objective_for_stage(
        model, "retrieval", 0.0, fast=True, negatives="queries", query_bank=wider
    )
    assert wide(batch)["loss"].item() > loss.item()


def test_query_negatives_never_push_away_a_positive_of_a_repeated_question(model, tiny_data):
    """The same question twice with different positive documents: in the bank it is one
    row answered by both, and each copy counts both documents as positives, so with only
    these two documents and one question nothing is a negative and the loss is 0."""
    from dataclasses import replace

    collator, loaded = _items(model, "retrieval", tiny_data["qa"], 8)
    first = loaded[0][1]
    other = next(
        ex for _, ex in loaded if ex.docs[ex.pos_index[0]] != first.docs[first.pos_index[0]]
    )
    items = [(0, first), (1, replace(other, questions=first.questions))]
    prepare_model_for_stage(model, "retrieval", K, fast=True, negatives="queries")
    model.eval()
    bank = QueryBank(model)
    bank.expect((ex.question, [ex.docs[i] for i in ex.pos_index]) for _, ex in items)
    assert len(bank) == 1
    objective = objective_for_stage(
        model, "retrieval", 0.0, fast=True, negatives="queries", query_bank=bank
    )
    assert objective(collator(items))["loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_query_negatives_need_a_query_bank_and_the_fast_step(model):
    with pytest.raises(ValueError, match="QueryBank"):
        objective_for_stage(model, "retrieval", 0.0, fast=False, negatives="queries")


def test_bank_negatives_need_the_memory_cache(model):
    with pytest.raises(ValueError, match="memory cache"):
        objective_for_stage(model, "retrieval", 0.0, fast=True, cache=None, negatives="bank")


def test_frozen_compressor_instruct_trains_the_generator_alone(model, tiny_data):
    """`--instruct-compressor frozen`: only the generator has gradient, its memory comes
    from the cache, and fast (cached) and legacy (uncached) steps give the same numbers."""
    collator, items = _items(model, "instruct", tiny_data["qa"], 2)
    batch = collator(items + [(2, items[0][1])])
    params, _ = prepare_model_for_stage(
        model, "instruct", K, fresh_decoder=False, fast=True, frozen_compressor=True
    )
    decoder = {id(p) for p in model.adapters.parameters(DECODER_ADAPTER)}
    assert params and all(id(p) in decoder for p in params)
    encoder = list(model.adapters.parameters(ENCODER_ADAPTER))
    assert not any(p.requires_grad for p in encoder)
    model.eval()
    cache = MemoryCache(model)
    cache.expect(batch["enc_texts"])
    outs = []
    for fast, use in ((True, cache), (False, None)):
        model.zero_grad(set_to_none=True)
        objective = objective_for_stage(
            model, "instruct", 0.1, fast=fast, cache=use, frozen_compressor=True
        )
        out = objective(batch)
        out["loss"].backward()
        assert all(p.grad is None for p in encoder)
        outs.append((out, [p.grad.clone() for p in params]))
    (fast, fast_grads), (legacy, legacy_grads) = outs
    assert len(cache) == len(set(batch["enc_texts"]))
    assert _close(fast["loss"], fast["ntp"])  # the MSE term is reported, not trained
    for key in ("loss", "ntp", "mse"):
        assert _close(fast[key], legacy[key]), (key, fast[key], legacy[key])
    assert all(_close(a, b, 1e-4) for a, b in zip(fast_grads, legacy_grads))


def test_frozen_compressor_run_keeps_the_compressor_and_the_query_reasoner(
    finetune, tiny_base, tiny_data, tmp_path
):
    """The command line end to end: after `instruct --instruct-compressor frozen` the
    compressor and query reasoner are bit-identical (stores built with the model stay
    valid) and the generator has changed."""
    common = ["--train-batch-size", "2", "--eval-max-examples", "0", "--quiet"]
    start = tmp_path / "start"
    assert (
        finetune(
            "--data",
            f"compress={tiny_data['compress']}",
            "--data",
            f"retrieval={tiny_data['qa']}",
            "--stages",
            "compress,retrieval",
            "--base",
            str(tiny_base),
            "--max-steps",
            "1",
            "--output",
            start,
            *TINY_FLAGS,
            *common,
        )
        == 0
    )
    out = tmp_path / "gen"
    code = finetune(
        "--data",
        f"instruct={tiny_data['qa']}",
        "--stages",
        "instruct",
        "--init-from",
        start,
        "--instruct-decoder",
        "continue",
        "--instruct-compressor",
        "frozen",
        "--max-steps",
        "2",
        "--learning-rate",
        "1e-2",
        "--output",
        out,
        *TINY_FLAGS[4:],
        *common,
    )
    assert code == 0
    before = ClaraModel.from_pretrained(start, base_model=tiny_base, dtype=torch.float32)
    after = ClaraModel.from_pretrained(out, base_model=tiny_base, dtype=torch.float32)

    def weights(m, name):
        return [p.detach().clone() for p in m.adapters.parameters(name)]

    for name in (ENCODER_ADAPTER, QUERY_ADAPTER):
        assert all(torch.equal(a, b) for a, b in zip(weights(before, name), weights(after, name)))
    assert after.model_identity == before.model_identity  # stores of the model stay valid
    changed = zip(weights(before, DECODER_ADAPTER), weights(after, DECODER_ADAPTER))
    assert any(not torch.equal(a, b) for a, b in changed)


def test_dry_run_estimates_only_what_was_measured():
    from training import estimate

    assert estimate.stage_minutes("e2e", 77, "default", "cpu") == pytest.approx(77 / 0.77 / 60)
    assert estimate.stage_minutes("e2e", 77, "default", "cuda") is None  # no GPU rate measured
    assert estimate.teacher_minutes(120, "./my-base", "cpu") is None


def test_memory_cache_dir_reloads_the_same_rows_without_compressing(model, tmp_path, monkeypatch):
    import training.memory_cache as memory_cache

    texts = ["Paris is in France.", "Rome is in Italy.", "Tea grows in Assam."]
    first = MemoryCache(model, directory=tmp_path)
    first.fill(texts + texts[:1])
    (saved,) = tmp_path.glob("*.safetensors")
    assert saved.name.startswith(model.model_identity)

    def no_compressing(*args, **kwargs):
        raise AssertionError("compressed although the same set was on disk")

    monkeypatch.setattr(memory_cache, "frozen_memory", no_compressing)
    again = MemoryCache(model, directory=tmp_path)
    again.fill(list(reversed(texts)))
    assert torch.equal(again.bank(), first.bank())  # bit for bit, in the same row order
    assert torch.equal(again.lookup(texts)[1], first.lookup(texts)[1])
    monkeypatch.undo()

    # another set of documents, or another compressor, is another file; a miss beside
    # files of the same compressor says why it compresses again
    with pytest.warns(
        UserWarning,
        match=r"holds 1 file\(s\) for this compressor but none for "
        r"these 2 documents.*--seed, --max-steps",
    ):
        MemoryCache(model, directory=tmp_path).fill(texts[:2])
    monkeypatch.setattr(type(model), "model_identity", property(lambda self: "clara-0" * 2))
    MemoryCache(model, directory=tmp_path).fill(texts)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


def _file_contents(path: Path) -> tuple[dict, list]:
    """Metadata and tensors of a safetensors file (its header's key order is not fixed)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    return metadata, sorted((k, v.tolist()) for k, v in load_file(str(path)).items())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        # e.g. a disk that filled up under another tool
        (lambda data: data[: len(data) // 2], "unreadable memory cache file"),
        # one bit of the last row's data, the safetensors frame intact
        (lambda data: data[:-1] + bytes([data[-1] ^ 0x40]), "do not match the digest recorded"),
    ],
    ids=["truncated", "flipped-bit"],
)
def test_memory_cache_dir_recomputes_a_damaged_file_and_says_so(model, tmp_path, damage, message):
    texts = ["Paris is in France.", "Rome is in Italy."]
    MemoryCache(model, directory=tmp_path).fill(texts)
    (saved,) = tmp_path.glob("*.safetensors")
    good = _file_contents(saved)
    saved.write_bytes(damage(saved.read_bytes()))
    fresh = MemoryCache(model, directory=tmp_path)
    with pytest.warns(UserWarning, match=message):
        fresh.fill(texts)
    reference = MemoryCache(model)
    reference.fill(texts)
    assert torch.equal(fresh.bank(), reference.bank())
    assert _file_contents(saved) == good  # rewritten whole
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_memory_cache_dir_run_loads_the_first_runs_memory_with_the_same_losses(
    finetune, tiny_base, tiny_data, tmp_path, monkeypatch
):
    import training.memory_cache as memory_cache

    args = [
        *retrieval_run_flags(tiny_base, tiny_data),
        "--memory-cache-dir",
        str(tmp_path / "memories"),
    ]
    assert finetune(*args, "--output", str(tmp_path / "a"), "--quiet") == 0
    assert len(list((tmp_path / "memories").glob("*.safetensors"))) == 1

    def no_compressing(*args, **kwargs):
        raise AssertionError("compressed although the first run's memory was on disk")

    monkeypatch.setattr(memory_cache, "frozen_memory", no_compressing)
    # the reused memory is as cut as when it was made: the second run says so too
    with pytest.warns(DocumentTruncatedWarning, match="13 of 13 documents are longer"):
        assert finetune(*args, "--output", str(tmp_path / "b"), "--quiet") == 0
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")
