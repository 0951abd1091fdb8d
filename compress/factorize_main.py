"""distillery-factorize: SVD-factorize a student's 1x1 convolutions, distill-fine-tune, report.

The library is compress/factorize_job.py (over compress/factorize.py, rank_selection.py, finetune.py);
this is its thin absl entry point.

    distillery-factorize --model=runs/demo/student/student.keras --train='runs/demo/records/train-*' \
        --eval='runs/demo/records/eval-*' --output=runs/demo/factorized.keras --energy=0.9 --mode=layerwise

Rank selection (one of): --energy=F (fraction of squared singular values kept per layer, default 0.9),
--rank_ratio=F (rank = F * min(Cin, Cout)), --target_latency_ms=MS (greedy global budget from the
per-op profile of the int8 student) or --latency_reduction=F (the same, budget (1 - F) x its latency).
Outputs: OUTPUT (.keras) and OUTPUT.report.json.
"""

from __future__ import annotations

import sys

from absl import app, logging

from compress import factorize, factorize_job, finetune, rank_selection
from distillery import cli, records

cli.define_flags(factorize_job.JobConfig)
cli.define_flags(finetune.FinetuneConfig, skip=["train_pattern"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    try:
        config = cli.from_flags(factorize_job.JobConfig)
    except factorize_job.JobError as error:
        sys.exit(f"distillery-factorize: error: {error}")
    config.tuning = cli.from_flags(finetune.FinetuneConfig, train_pattern=config.train_pattern)
    try:
        report = factorize_job.run(config, log=lambda line: print(line, flush=True))
    except (factorize_job.JobError, factorize.FactorizationError, rank_selection.BudgetError,
            records.RecordError) as error:
        sys.exit(f"distillery-factorize: error: {error}")
    print(factorize_job.format_report(report))


def run_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    run_main()
