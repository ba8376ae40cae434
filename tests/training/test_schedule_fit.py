"""`--max-minutes` fits the rest of the learning-rate schedule to the budget it measures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import get_scheduler

import training.loop as loop
from tests.training.conftest import retrieval_run_flags
from training.schedule_fit import SqueezedSchedule, refit_scheduler, steps_that_fit


def _scheduler(name: str, planned: int, warmup: int = 0):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    kwargs = {"min_lr_rate": 0.1} if name == "cosine_with_min_lr" else None
    scheduler = get_scheduler(name, optimizer, warmup, planned, scheduler_specific_kwargs=kwargs)
    scheduler.lr_lambdas = [SqueezedSchedule(fn, planned) for fn in scheduler.lr_lambdas]
    return optimizer, scheduler


def _rates(optimizer, scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("name", ["linear", "cosine_with_min_lr", "constant"])
def test_the_rest_of_the_schedule_runs_in_the_steps_that_fit(name):
    planned, at, fit = 100, 10, 40
    optimizer, scheduler = _scheduler(name, planned, warmup=5)
    reference = _rates(*_scheduler(name, planned, warmup=5), planned + 1)
    before = _rates(optimizer, scheduler, at)
    assert before == reference[:at]  # unchanged until the refit
    refit_scheduler(scheduler, optimizer, at, fit)
    after = _rates(optimizer, scheduler, fit - at + 1)
    assert after[0] == pytest.approx(reference[at])  # continuous at the refit
    assert after[-1] == pytest.approx(reference[planned])  # the planned final rate, at `fit`
    assert all(a >= b - 1e-12 for a, b in zip(after, after[1:]))  # still non-increasing
    assert optimizer.param_groups[0]["lr"] == pytest.approx(reference[planned])


def test_a_refit_travels_in_the_scheduler_state(tmp_path):
    optimizer, scheduler = _scheduler("linear", 50)
    _rates(optimizer, scheduler, 12)
    refit_scheduler(scheduler, optimizer, 12, 30)
    _rates(optimizer, scheduler, 3)
    saved = tmp_path / "scheduler.json"
    saved.write_text(json.dumps(scheduler.state_dict()))  # as checkpoint.py writes it
    resumed_optimizer, resumed = _scheduler("linear", 50)
    resumed.load_state_dict(json.loads(saved.read_text()))
    for group, rate in zip(resumed_optimizer.param_groups, resumed.get_last_lr()):
        group["lr"] = rate  # the optimiser's own state carries its rate on a real resume
    assert _rates(resumed_optimizer, resumed, 16) == _rates(optimizer, scheduler, 16)


def test_steps_that_fit_stay_within_the_plan():
    assert steps_that_fit(10, 100, seconds_per_step=2.0, seconds_left=60.0) == 40
    assert steps_that_fit(10, 100, seconds_per_step=2.0, seconds_left=1e6) == 100
    assert steps_that_fit(10, 100, seconds_per_step=2.0, seconds_left=0.0) == 11
    with pytest.raises(ValueError, match="at < fit < planned"):
        SqueezedSchedule(lambda s: 1.0, 10).refit(at=5, fit=10)


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "training_log.jsonl").read_text().splitlines()]


def test_a_stage_that_cannot_finish_in_its_minutes_completes_its_schedule_and_resumes_alike(
    finetune, tiny_base, tiny_data, tmp_path, monkeypatch, capsys
):
    # The measured pace is the machine's: pretend only 14 of the 20 planned steps fit.
    monkeypatch.setattr(loop, "steps_that_fit", lambda step, planned, pace, left: 14)
    out = tmp_path / "o"
    args = [
        *retrieval_run_flags(tiny_base, tiny_data, max_steps=20),
        "--epochs",
        "5",
        "--learning-rate",
        "1e-3",
        "--max-minutes",
        "retrieval=600",
        "--save-steps",
        "12",
        "--output",
        str(out),
    ]
    assert finetune(*args) == 0
    text = capsys.readouterr().out
    assert "only 14 of its 20 planned steps fit --max-minutes retrieval=600" in text
    assert "stopped after optimiser step 14 of 20" in text
    log = _log(out)
    assert len(log) == 14
    planned = tmp_path / "planned"  # the same run with time to spare
    no_budget = [a for a in args if a not in ("--max-minutes", "retrieval=600")]
    assert finetune(*no_budget[:-1], str(planned), "--quiet") == 0
    plan = _log(planned)
    assert [r["lr"] for r in log[:11]] == [r["lr"] for r in plan[:11]]  # refit after step 11
    assert [r["loss"] for r in log[:12]] == [r["loss"] for r in plan[:12]]
    # steps 12-14 run the planned steps 12, 15 and 18 (rates of the schedule at 11, 14, 17):
    # 9 planned steps squeezed into 3, so the stage ends where the plan was to end
    assert [r["lr"] for r in log[11:]] == pytest.approx([plan[i]["lr"] for i in (11, 14, 17)])
    full = [(r["loss"], r["lr"]) for r in log]
    (out / "checkpoints" / "LATEST").write_text("00-retrieval-step000012")
    assert finetune(*args, "--resume") == 0
    assert [(r["loss"], r["lr"]) for r in _log(out)] == full  # same rates, same losses
