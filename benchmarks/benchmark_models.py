"""What each model of notebook 05 costs to train on this machine: the candidates for accuracy per CPU-second
(emnist_utils.experiments.beyond.CANDIDATES), the named runs `cpu` and `best`, and the report's final run
(REPORT_FINAL), measured in ONE interleaved run. This is the CPU cost that notebook 05 and the README cite.

A training step is what `fit` does per batch, minus the data: forward, backward and optimiser step with the run's
recipe (optimiser, precision, memory layout, batch augmentation, weight-average update), on one batch already in
memory (experiments.plan.training_step; the cost does not depend on pixel values). After each model's untimed warm-
up, every round times --steps steps of each model in turn (the order rotating from round to round), for --rounds
rounds, so that a change in machine load hits all models alike (experiments.plan.interleaved_rates, the same
measurement notebook 05 makes). Runs that share a training step (same model and step settings, e.g. `cpu` and
`best`) are timed once. Printed per run: parameters, multiply-adds of one forward pass (registry.multiply_adds),
training images/s (mean ± std over rounds), that speed as a ratio to the report model's, and the training time it
implies for the run's epochs on the data's training and validation parts (experiments.plan.estimate_seconds).
Results go to benchmarks/results/benchmark_models_<device>.{txt,json,csv}.

    .venv/bin/python benchmarks/benchmark_models.py [--rounds 5] [--steps 5] [--threads N] [--quick]

A measurement, not a test: it prints the machine it ran on (CPU, cores, torch version, GPU) and warns when the
load average says the machine was busy; run it on an otherwise idle one. --quick: batches of 32, one step per round.
"""

from __future__ import annotations

import csv
import io

import measure
import torch
from tabulate import tabulate

from emnist_utils.core.data import data_location, load_emnist
from emnist_utils.core.registry import build_model, count_parameters, multiply_adds
from emnist_utils.core.splits import make_splits
from emnist_utils.experiments import beyond
from emnist_utils.experiments.plan import cost_key, estimate_seconds, interleaved_rates
from emnist_utils.experiments.recipes import NAMED_RUNS
from emnist_utils.experiments.runner import format_duration
from emnist_utils.experiments.spec import RunSpec
from emnist_utils.experiments.trials import REPORT_FINAL


def listed_runs() -> list[tuple[RunSpec, list[str]]]:
    """Each run once, report model first, with every name it is listed under."""
    listed = [(REPORT_FINAL, "REPORT_FINAL")] + [(c, f"candidate {c.name}") for c in beyond.CANDIDATES]
    listed += [(NAMED_RUNS[n], f"NAMED_RUNS['{n}']") for n in ("cpu", "best")]
    runs: dict[RunSpec, list[str]] = {}
    for run, name in listed:
        runs.setdefault(run, []).append(name)
    return list(runs.items())


def main(argv=None) -> None:
    p = measure.parser(__doc__, all_cores=True)
    measure.interleaved_options(p, "model", rounds=5, steps=5, warmup=2)
    args = measure.parse(p, argv)
    device, info = measure.start(args)
    data = load_emnist(*data_location(args.data, args.split), download=False)
    splits = make_splits(data, args.seed)
    del data
    train_images, val_images = len(splits.train_labels), len(splits.val_labels)

    runs = listed_runs()
    threads = torch.get_num_threads()
    distinct = {cost_key(run, device, threads): run for run, _ in runs}
    measure.log(f"--- {len(distinct)} training steps for {len(runs)} runs, {args.rounds} interleaved rounds")
    measured = interleaved_rates(
        list(distinct.values()),
        splits.num_classes,
        device,
        rounds=args.rounds,
        steps=args.steps,
        warmup=args.warmup,
        batch=32 if args.quick else None,
    )
    rates = dict(zip(distinct, measured))

    report_rate = measure.mean_std(rates[cost_key(REPORT_FINAL, device, threads)])[0]
    rows = []
    for run, names in runs:
        samples = rates[cost_key(run, device, threads)]
        rate, std = measure.mean_std(samples)
        m = run.model
        rows.append(
            {
                "run": run.name,
                "listed_as": ", ".join(names),
                "arch": m.arch,
                "c1": m.c1,
                "c2": m.c2,
                "hidden": m.hidden,
                "parameters": count_parameters(build_model(m, splits.num_classes)),
                "multiply_adds": multiply_adds(m, splits.num_classes),
                "batch": run.recipe.batch_size,
                "augment": run.recipe.augment,
                "ema": run.recipe.ema_decay > 0,
                "epochs": run.recipe.epochs,
                "img_per_s_mean": rate,
                "img_per_s_std": std,
                "img_per_s": samples,
                "vs_report_model": rate / report_rate,
                "implied_training_seconds": estimate_seconds(run, rate, train_images, val_images),
            }
        )
    table = [
        [
            r["run"],
            r["listed_as"],
            f"{r['arch']} {r['c1']}-{r['c2']}-{r['hidden']}",
            f"{r['parameters']:,}",
            f"{r['multiply_adds'] / 1e6:.1f}",
            r["batch"],
            r["augment"] + (" + EMA" if r["ema"] else ""),
            r["epochs"],
            measure.format_rate(r["img_per_s_mean"], r["img_per_s_std"]),
            f"{r['vs_report_model']:.2f}x",
            format_duration(r["implied_training_seconds"]),
        ]
        for r in rows
    ]
    text = "\n".join(
        [
            measure.describe_machine(info),
            measure.describe_data(splits),
            "",
            f"Training cost: {args.rounds} interleaved rounds of {args.steps} step(s) per model after {args.warmup} "
            f"warm-up step(s); img/s mean ± std over rounds"
            + (" (--quick: batch 32, numbers mean nothing)" if args.quick else ""),
            tabulate(
                table,
                headers=[
                    "run",
                    "listed as",
                    "model",
                    "parameters",
                    "M mult-adds",
                    "batch",
                    "augment",
                    "epochs",
                    "img/s",
                    "vs report model",
                    "implied training time",
                ],
                disable_numparse=True,
            ),
            "  implied training time = epochs x (training part / img/s + validation part / (3 x img/s))",
        ]
    )
    columns = [k for k in rows[0] if k != "img_per_s"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    data = {**splits.provenance, **splits.sizes()}
    measure.publish("models", args, device, info, text, data, rows, extra={".csv": buffer.getvalue()})


if __name__ == "__main__":
    main()
