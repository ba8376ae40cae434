"""`python -m training.finetune` end to end on the tiny fixture base."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clara_integrations import ClaraModel
from clara_integrations.modeling.adapters import ADAPTER_NAMES
from tests.training.conftest import TINY_FLAGS
from training import loop, losses

TINY_FLAGS = [*TINY_FLAGS, "--quiet"]
REPO = Path(__file__).resolve().parents[2]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]


def test_docs_to_checkpoint_then_e2e_from_it(finetune, tiny_base, tiny_data, tmp_path):
    out = tmp_path / "my-clara"
    code = finetune(
        "--docs",
        tiny_data["docs"],
        "--output",
        out,
        "--base",
        tiny_base,
        *TINY_FLAGS,
        "--stages",
        "compress,instruct,retrieval,e2e",
        "--max-steps",
        "1",
        "--train-batch-size",
        "2",
        "--micro-train-batch-size",
        "2",
        "--num-candidates",
        "4",
        "--eval-max-examples",
        "1",
        "--eval-max-new-tokens",
        "1",
        "--official-format",
    )
    assert code == 0
    for name in ("compress", "instruct", "retrieval", "e2e", "eval", "chunks"):
        assert (out / "data" / f"{name}.jsonl").stat().st_size > 0
    assert [r["stage"] for r in _log(out)] == ["compress", "instruct", "retrieval", "e2e"]
    report = (out / "report.md").read_text()
    assert "| e2e |" in report and "recall@1" in report
    if importlib.util.find_spec("matplotlib"):  # plots are optional (the `train` extra)
        assert (out / "loss.png").is_file() and (out / "retrieval.png").is_file()
    else:
        assert "pip install matplotlib" in report
    model = ClaraModel.from_pretrained(out, dtype=torch.float32)
    assert model.adapters.names == list(ADAPTER_NAMES) or set(model.adapters.names) == set(
        ADAPTER_NAMES
    )
    assert model.config.training_stage == "stage2" and model.config.generation_top_k == 2
    released = ClaraModel.from_pretrained(
        out / "official", base_model=tiny_base, dtype=torch.float32
    )
    assert set(released.adapters.names) == set(ADAPTER_NAMES)
    # The second command: e2e on reference-format data from that checkpoint.
    code = finetune(
        "--data",
        tiny_data["qa"],
        "--stages",
        "e2e",
        "--init-from",
        out,
        "--output",
        tmp_path / "e2e",
        *TINY_FLAGS[4:],
        "--max-steps",
        "1",
        "--train-batch-size",
        "2",
        "--micro-train-batch-size",
        "2",
        "--eval-max-examples",
        "0",
    )
    assert code == 0 and len(_log(tmp_path / "e2e")) == 1


def _compress_then_e2e(tiny_base, tiny_data, out: Path) -> list[object]:
    """Flags of a compress + e2e run on the tiny data into `out`."""
    return [
        "--data",
        f"compress={tiny_data['compress']}",
        "--data",
        f"e2e={tiny_data['qa']}",
        "--stages",
        "compress,e2e",
        "--output",
        out,
        "--base",
        tiny_base,
        *TINY_FLAGS,
    ]


def test_dry_run_prints_plan(finetune, tiny_base, tiny_data, tmp_path, capsys):
    code = finetune(
        *_compress_then_e2e(tiny_base, tiny_data, tmp_path / "o"),
        "--train-batch-size",
        "4",
        "--dry-run",
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "compress" in out and "e2e" in out and "steps" in out and "tokens" in out
    assert "est. min: no rate measured for" in out  # the tiny base was never timed
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_max_minutes_stops_a_stage_and_the_run_goes_on(
    finetune, tiny_base, tiny_data, tmp_path, capsys
):
    out = tmp_path / "o"
    code = finetune(
        *_compress_then_e2e(tiny_base, tiny_data, out),
        "--train-batch-size",
        "2",
        "--micro-train-batch-size",
        "2",
        "--max-minutes",
        "compress=0",  # spent at once: the stage stops after its first optimiser step
        "--max-steps",
        "e2e=2",
        "--eval-max-examples",
        "0",
    )
    assert code == 0
    assert [r["stage"] for r in _log(out)] == ["compress", "e2e", "e2e"]
    text = capsys.readouterr().out
    assert "stage compress stopped after optimiser step 1 of 4: --max-minutes compress=0" in text
    assert "plan the steps that fit: --max-steps compress=1" in text  # what to do instead
    assert "e2e stopped" not in text
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    # The stopped stage is saved as complete at the step it reached.
    assert saved == ["00-compress-step000001", "01-e2e-step000002", "LATEST"]


def test_malformed_lines_skipped_or_strict(finetune, tiny_base, tiny_data, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(tiny_data["qa"].read_text().splitlines()[0] + "\n{oops\n", encoding="utf-8")
    common = [
        "--data",
        f"e2e={bad}",
        "--stages",
        "e2e",
        "--output",
        tmp_path / "o",
        "--base",
        tiny_base,
        *TINY_FLAGS,
        "--train-batch-size",
        "1",
        "--micro-train-batch-size",
        "1",
        "--dry-run",
    ]
    assert finetune(*common) == 0
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().out
    assert finetune(*common, "--strict") == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().out


def _rows_without_answer(tiny_data, n=2):
    rows = [json.loads(line) for line in tiny_data["qa"].read_text().splitlines()[:n]]
    for row in rows:
        for key in ("answer", "answers", "golden_answers"):
            row.pop(key, None)
    return rows


def test_stage_without_usable_line_stops_naming_stage_file_and_reasons(
    finetune, tiny_base, tiny_data, tmp_path, capsys
):
    data = tmp_path / "e2e.jsonl"
    common = [
        "--stages",
        "e2e",
        "--output",
        tmp_path / "o",
        "--base",
        tiny_base,
        *TINY_FLAGS,
        "--train-batch-size",
        "1",
        "--micro-train-batch-size",
        "1",
        "--dry-run",
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows_without_answer(tiny_data)))
    assert finetune("--data", f"e2e={data}", *common) == 2
    out = capsys.readouterr().out
    assert f"stage 'e2e': no usable example in {data}; skipped 2 (2 needs 'answer')" in out
    assert f"{data}:1: needs 'answer'" in out and "--data e2e=FILE" in out
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert finetune("--data", f"e2e={empty}", *common) == 2
    assert (
        f"stage 'e2e': no usable example in {empty}; skipped 1 (1 the file is empty)"
        in capsys.readouterr().out
    )
    # The reference README's format: the answer in `gold_answer`.
    rows = [dict(r, gold_answer=a) for r, a in zip(_rows_without_answer(tiny_data), ["x", "y"])]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert finetune("--data", f"e2e={data}", *common) == 0


def test_undecodable_lines_one_summary_warning_or_strict(
    finetune, tiny_base, tiny_data, tmp_path, capsys
):
    good = tiny_data["qa"].read_bytes().splitlines(keepends=True)[:2]
    bad = tmp_path / "bad.jsonl"
    lone = json.dumps(
        dict(json.loads(good[0]), question="half \ud800 pair")
    ).encode()  # ascii \\ud800
    bad.write_bytes(
        b"\xef\xbb\xbf" + good[0] + b"\xff\xfe\n" + b"caf\xe9\n" + lone + b"\n" + good[1]
    )
    common = [
        "--data",
        f"e2e={bad}",
        "--stages",
        "e2e",
        "--output",
        tmp_path / "o",
        "--base",
        tiny_base,
        *TINY_FLAGS,
        "--train-batch-size",
        "1",
        "--micro-train-batch-size",
        "1",
        "--dry-run",
    ]
    assert finetune(*common) == 0
    out = capsys.readouterr().out
    assert out.count("--strict stops at the first") == 1  # one warning, not one per line
    assert "skipped 3 (2 not valid UTF-8, 1 holds a lone surrogate)" in out
    assert f"{bad}:2: not valid UTF-8" in out and f"{bad}:4: holds a lone surrogate" in out
    assert f"{bad}:1" not in out  # the BOM line is read
    assert finetune(*common, "--strict") == 2
    assert f"{bad}:2: not valid UTF-8" in capsys.readouterr().out


def test_docs_without_usable_document_stops_with_the_reasons(finetune, tiny_base, tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    (docs / "empty.md").write_bytes(b"")
    code = finetune(
        "--docs", docs, "--output", tmp_path / "o", "--base", tiny_base, *TINY_FLAGS, "--dry-run"
    )
    assert code == 2
    out = capsys.readouterr().out
    assert f"no usable .txt, .md or .jsonl document under --docs {docs}" in out
    assert f"{docs / 'notes.jsonl'}:1: not valid UTF-8" in out


def _three_checkpointed_compress_steps(tiny_data, tiny_base, out):
    """Flags: 3 compress steps of 2 examples on the tiny base, a checkpoint after each."""
    return (
        "--data", tiny_data["compress"], "--stages", "compress", "--output", out,
        "--base", tiny_base, *TINY_FLAGS, "--max-steps", "3", "--train-batch-size", "2",
        "--micro-train-batch-size", "2", "--save-steps", "1", "--eval-max-examples", "0",
    )  # fmt: skip


def test_non_finite_loss_stops_and_keeps_last_checkpoint(
    finetune, tiny_base, tiny_data, tmp_path, monkeypatch, capsys
):
    forward = losses.CompressionObjective.forward
    calls = {"n": 0}

    def poisoned(self, batch):
        out = forward(self, batch)
        calls["n"] += 1
        if calls["n"] == 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(losses.CompressionObjective, "forward", poisoned)
    out = tmp_path / "o"
    code = finetune(
        *_three_checkpointed_compress_steps(tiny_data, tiny_base, out),
    )
    assert code == 3
    message = capsys.readouterr().out
    assert (
        "non-finite loss" in message
        and "optimiser step 2" in message
        and "micro-batch 1" in message
    )
    assert "00-compress-step000001 (named by" in message  # the checkpoint it keeps, by name
    assert (out / "checkpoints" / "LATEST").read_text() == "00-compress-step000001"
    assert not (out / "report.md").exists()


def test_non_finite_gradient_with_finite_loss_never_reaches_a_checkpoint(
    finetune, tiny_base, tiny_data, tmp_path, monkeypatch, capsys
):
    prepare = loop.prepare_model_for_stage
    snapshot = tmp_path / "weights-before-nan"
    backwards = {"n": 0}

    def poisoned(model, *args, **kwargs):
        params, handle = prepare(model, *args, **kwargs)

        def hook(grad):  # the loss stays finite; only step 2's gradient is NaN
            backwards["n"] += 1
            if backwards["n"] != 2:
                return grad
            model.save_pretrained(snapshot)  # the weights step 2 starts from
            return grad * float("nan")

        params[0].register_hook(hook)
        return params, handle

    monkeypatch.setattr(loop, "prepare_model_for_stage", poisoned)
    out = tmp_path / "o"
    code = finetune(
        *_three_checkpointed_compress_steps(tiny_data, tiny_base, out),
        "--lr-scheduler",
        "constant",
        "--learning-rate",
        "1e-2",
    )
    assert code == 3
    message = capsys.readouterr().out
    kept = out / "checkpoints" / "00-compress-step000001"
    assert "non-finite gradient" in message and "optimiser step 2" in message
    assert f"{kept} (named by" in message and "weights were not updated" in message
    assert (out / "checkpoints" / "LATEST").read_text() == kept.name
    assert not (out / "checkpoints" / "00-compress-step000002").exists()
    saved = {f.name: load_file(f) for f in sorted((kept / "model").glob("*.safetensors"))}
    before = {f.name: load_file(f) for f in sorted(snapshot.glob("*.safetensors"))}
    assert saved.keys() == before.keys() and saved
    for name, tensors in saved.items():
        assert all(torch.isfinite(t).all() for t in tensors.values()), name
        assert all(torch.equal(t, before[name][k]) for k, t in tensors.items()), name
    assert not (out / "report.md").exists()


def test_checkpoint_refuses_non_finite_weights(tmp_path, tiny_base):
    from accelerate import Accelerator

    from clara_integrations import ClaraConfig
    from training.checkpoint import CheckpointManager, NonFiniteError

    config = ClaraConfig.for_training(str(tiny_base), doc_max_length=64, compr_rate=16, lora_r=4)
    model = ClaraModel.from_base(
        tiny_base, config, adapters=[ADAPTER_NAMES[0]], dtype=torch.float32
    )
    ckpts = CheckpointManager(tmp_path, Accelerator(cpu=True))
    ckpts.save("00-compress-step000001", model, None, None, {"step": 1})
    weight = model.adapters.parameters(ADAPTER_NAMES[0])[0]
    with torch.no_grad():
        weight[0, 0] = float("inf")
    weight.requires_grad_(True)
    with pytest.raises(
        NonFiniteError,
        match=r"refusing to save checkpoint 00-compress-step000002.*"
        r"00-compress-step000001 \(named by .*\) is kept",
    ):
        ckpts.save("00-compress-step000002", model, None, None, {"step": 2})
    assert (tmp_path / "LATEST").read_text() == "00-compress-step000001"
    assert not any(p.name.endswith("step000002") for p in tmp_path.iterdir())


# One uninterrupted single-process run serves as the reference of the resume and DDP tests.
def _run_args(tiny_base, tiny_data, out):
    return [
        "--data",
        f"compress={tiny_data['compress']}",
        "--data",
        f"e2e={tiny_data['qa']}",
        "--stages",
        "compress,e2e",
        "--output",
        str(out),
        "--base",
        str(tiny_base),
        *TINY_FLAGS,
        "--max-steps",
        "compress=2,e2e=1",
        "--train-batch-size",
        "2",
        "--micro-train-batch-size",
        "1",
        "--learning-rate",
        "1e-3",
        "--eval-max-examples",
        "0",
    ]


@pytest.fixture(scope="module")
def single_run(finetune, tiny_base, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert finetune(*_run_args(tiny_base, tiny_data, out)) == 0
    return out


def _same_adapters(a: Path, b: Path, atol: float = 0.0) -> bool:
    for name in ADAPTER_NAMES:
        x, y = load_file(a / f"{name}.safetensors"), load_file(b / f"{name}.safetensors")
        if not all(torch.allclose(x[k], y[k], atol=atol, rtol=0) for k in x):
            return False
    return True


def test_kill_9_then_resume_matches_uninterrupted(
    finetune, tiny_base, tiny_data, single_run, tmp_path
):
    killed = tmp_path / "killed"
    args = [*_run_args(tiny_base, tiny_data, killed), "--save-steps", "1"]
    args.remove("--quiet")  # the log line "saved checkpoint" tells when to kill
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.finetune", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in proc.stdout:
            if "saved checkpoint" in line:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "report.md").exists()
    assert finetune(*args, "--resume", "--quiet") == 0
    resumed, full = _log(killed), _log(single_run)
    assert [(r["stage"], r["step"]) for r in resumed] == [(r["stage"], r["step"]) for r in full]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]  # exact, step for step
    assert _same_adapters(killed, single_run)


@pytest.mark.skipif(sys.platform != "linux", reason="gloo CPU DDP via torchrun")
@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="compares 2 CPU (gloo) processes with a single "
    "process that ran on CPU; with CUDA visible that baseline ran on the GPU",
)
def _two_processes(tiny_base, tiny_data, out: Path, **env: str) -> str:
    """`torchrun --nproc_per_node 2 -m training.finetune` on the CPU; returns its stdout."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "training.finetune",
            *_run_args(tiny_base, tiny_data, out),
        ],
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1", **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout


def test_two_process_ddp_matches_one_process(tiny_base, tiny_data, single_run, tmp_path):
    _two_processes(tiny_base, tiny_data, tmp_path / "ddp")
    ddp, single = _log(tmp_path / "ddp"), _log(single_run)
    state = json.loads(
        (tmp_path / "ddp" / "checkpoints" / "01-e2e-step000001" / "trainer_state.json").read_text()
    )
    assert [p["grad_accum"] for p in state["plans"]] == [1, 1]  # 2 processes x micro 1 = global 2
    assert len(ddp) == len(single) == 3
    for a, b in zip(ddp, single):  # same global batches, gradients averaged by DDP
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5), (a, b)
    assert _same_adapters(tmp_path / "ddp", single_run, atol=1e-6)


@pytest.mark.skipif(sys.platform != "linux", reason="gloo CPU processes via torchrun")
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only launch")
def test_fsdp_asked_on_cpu_runs_as_ddp_and_says_so(tiny_base, tiny_data, single_run, tmp_path):
    """The installed Accelerate turns a CPU-only 2-process FSDP launch into DDP: the run
    must say so, and still train exactly as the single process does."""
    out = _two_processes(
        tiny_base, tiny_data, tmp_path / "fsdp", ACCELERATE_USE_FSDP="true", FSDP_VERSION="2"
    )
    assert (
        "FSDP was asked for (accelerate config) but Accelerate runs these 2 process(es) as "
        "MULTI_CPU on cpu" in out
    )
    for a, b in zip(_log(tmp_path / "fsdp"), _log(single_run)):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5), (a, b)


def test_e2e_from_released_format_checkpoint(finetune, fixture_dir, tiny_data, tmp_path):
    """--init-from a checkpoint in the released format (the fixture's Instruct, stage1_2)."""
    out = tmp_path / "from-released"
    code = finetune(
        "--data",
        tiny_data["qa"],
        "--stages",
        "e2e",
        "--init-from",
        fixture_dir / "ckpt-instruct",
        "--base",
        fixture_dir / "tiny-llama-base",
        "--output",
        out,
        *TINY_FLAGS[6:],
        "--generation-top-k",
        "2",
        "--max-steps",
        "1",
        "--train-batch-size",
        "2",
        "--micro-train-batch-size",
        "2",
        "--eval-max-examples",
        "0",
    )
    assert code == 0 and len(_log(out)) == 1
    model = ClaraModel.from_pretrained(out, dtype=torch.float32)
    assert set(model.adapters.names) == set(ADAPTER_NAMES) and model.n_mem == 4


def test_resume_from_a_stage_end_checkpoint(finetune, tiny_base, tiny_data, single_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(single_run / "checkpoints", out / "checkpoints")
    (out / "checkpoints" / "LATEST").write_text("00-compress-step000002")  # compress done, e2e not
    assert finetune(*_run_args(tiny_base, tiny_data, out), "--resume") == 0
    assert [r["loss"] for r in _log(out)] == [r["loss"] for r in _log(single_run)]
    assert _same_adapters(out, single_run)


def test_label_free_query_reasoner_on_docs(finetune, fixture_dir, tiny_data, tmp_path):
    """training/README.md's query-reasoner recipe: --docs, retrieval only, bank negatives.
    Only the query reasoner changes; the compressor (and so every stored memory) does not."""
    out = tmp_path / "qr"
    code = finetune(
        "--docs",
        tiny_data["docs"],
        "--init-from",
        fixture_dir / "ckpt-e2e",
        "--base",
        fixture_dir / "tiny-llama-base",
        "--stages",
        "retrieval",
        "--retrieval-negatives",
        "bank",
        "--train-batch-size",
        "4",
        "--max-steps",
        "3",
        "--learning-rate",
        "1e-3",
        "--eval-max-examples",
        "0",
        "--memory-cache-dir",
        tmp_path / "memories",
        "--output",
        out,
        "--quiet",
    )
    assert code == 0 and len(_log(out)) == 3
    assert len(list((tmp_path / "memories").glob("clara-*.safetensors"))) == 1
    crops = [json.loads(x) for x in (out / "data" / "retrieval.jsonl").read_text().splitlines()]
    assert any(row["answer"] == "" for row in crops)
    before = ClaraModel.from_pretrained(
        fixture_dir / "ckpt-e2e", base_model=fixture_dir / "tiny-llama-base", dtype=torch.float32
    )
    after = ClaraModel.from_pretrained(out, dtype=torch.float32)
    assert after.model_identity == before.model_identity  # same compressor
    moved = [
        not torch.equal(a, b)
        for a, b in zip(
            after.adapters.parameters("query_reasoner_adapter"),
            before.adapters.parameters("query_reasoner_adapter"),
        )
    ]
    assert any(moved)


def test_compressor_trained_for_retrieval_then_resumed(finetune, fixture_dir, tiny_data, tmp_path):
    """training/README.md's compressor recipe (`--retrieval-negatives queries`): the
    compressor changes (and with it `model_identity`), the query reasoner does not, and a
    run resumed from a mid-stage checkpoint gives the uninterrupted run's losses."""
    base = fixture_dir / "tiny-llama-base"

    def run(out: Path, *extra: object) -> int:
        return finetune(
            "--init-from",
            fixture_dir / "ckpt-e2e",
            "--base",
            base,
            "--data",
            f"retrieval={tiny_data['qa']}",
            "--stages",
            "retrieval",
            "--retrieval-negatives",
            "queries",
            "--train-batch-size",
            "4",
            "--micro-train-batch-size",
            "2",
            "--max-steps",
            "2",
            "--learning-rate",
            "1e-3",
            "--eval-max-examples",
            "0",
            "--save-steps",
            "1",
            "--output",
            out,
            "--quiet",
            *extra,
        )

    whole = tmp_path / "cr"
    assert run(whole) == 0 and len(_log(whole)) == 2
    before = ClaraModel.from_pretrained(
        fixture_dir / "ckpt-e2e", base_model=base, dtype=torch.float32
    )
    after = ClaraModel.from_pretrained(whole, dtype=torch.float32)
    assert after.model_identity != before.model_identity  # the compressor moved
    for name, changed in (("encoder_adapter", True), ("query_reasoner_adapter", False)):
        pairs = zip(after.adapters.parameters(name), before.adapters.parameters(name))
        assert any(not torch.equal(a, b) for a, b in pairs) is changed, name
    resumed = tmp_path / "resumed"
    shutil.copytree(whole / "checkpoints", resumed / "checkpoints")
    (resumed / "checkpoints" / "LATEST").write_text("00-retrieval-step000001")
    assert run(resumed, "--resume") == 0
    assert [r["loss"] for r in _log(resumed)] == [r["loss"] for r in _log(whole)]
    assert _same_adapters(resumed, whole)


@pytest.mark.parametrize(("negatives", "why"), [("bank", "memory cache"), ("queries", "fast step")])
def test_retrieval_negatives_with_the_legacy_step_are_refused_before_training(
    finetune, tiny_data, tmp_path, negatives, why
):
    with pytest.raises(SystemExit, match=why):
        finetune(
            "--data",
            tiny_data["qa"],
            "--stages",
            "retrieval",
            "--retrieval-negatives",
            negatives,
            "--legacy-step",
            "--output",
            tmp_path / "x",
            "--dry-run",
        )
