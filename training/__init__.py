"""Fine-tuning CLaRa on your own documents (`python -m training.finetune`) and evaluating
it (`python -m training.evaluate`).

Modules, one concept each: `data` (reference JSONL formats), `synthesize` + `teachers` +
`bm25` (raw documents to training data), `collate` (batches and labels), `losses` (stage
objectives), `stages` (what each stage trains), `loop` (the Accelerate loop),
`checkpoint` (atomic, resumable checkpoints), `pipeline` (the steps of a run),
`evaluate` + `metrics` (held-out metrics), `report` (report.md and plots),
`benchmark_e2e` (stage 3 on the real 135M base, not run in CI).

Nothing is imported here, so `python -m training.finetune --help` stays fast and
`import clara_integrations` never pulls in training code.
"""

__all__: list[str] = []
