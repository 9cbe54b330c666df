"""What each model of notebook 05 costs to train on this machine: the candidates for accuracy per CPU-second
(emnist_utils.experiments.beyond.CANDIDATES), the named runs `cpu` and `best`, and the report's final run
(REPORT_FINAL), measured in ONE interleaved run. This is the CPU cost that notebook 05 and the README cite.

A training step is what `fit` does per batch, minus the data: forward, backward and optimiser step with the run's
recipe (optimiser, precision, memory layout, batch augmentation, weight-average update), on one batch of real
training images already in memory. After each model's untimed warm-up, every round times --steps steps of each
model in turn (the order rotating from round to round), for --rounds rounds, so that a change in machine load
hits all models alike. Runs that share a training step (same model and step settings, e.g. `cpu` and `best`) are
timed once. Printed per run: parameters, multiply-adds of one forward pass (registry.multiply_adds), training
images/s (mean ± std over rounds), that speed as a ratio to the report model's, and the training time it implies
for the run's epochs on the data's training and validation parts (experiments.plan.estimate_seconds).
Results go to benchmarks/results/benchmark_models_<device>.{txt,json,csv}.

    .venv/bin/python benchmarks/benchmark_models.py [--rounds 5] [--steps 5] [--threads N] [--quick]

A measurement, not a test: it prints the machine it ran on (CPU, cores, torch version, GPU) and warns when the
load average says the machine was busy; run it on an otherwise idle one. --quick: batches of 32, one step per round.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable

import measure
import torch
from tabulate import tabulate
from torch import nn

from emnist_utils.core.augment import get_augmentation
from emnist_utils.core.data import data_location, load_emnist
from emnist_utils.core.registry import build_model, count_parameters, multiply_adds
from emnist_utils.core.splits import Batches, make_splits
from emnist_utils.core.training import autocast_context, input_normalisation, make_ema, make_optimizer, pick_device
from emnist_utils.experiments import beyond
from emnist_utils.experiments.plan import estimate_seconds
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


def step_key(run: RunSpec, device: torch.device) -> str:
    """What a training step's cost depends on; runs with the same key are timed once."""
    r = run.recipe
    return json.dumps(
        [
            run.model.as_dict(),
            r.batch_size,
            r.optimizer,
            r.augment,
            r.precision,
            r.channels_last and device.type == "cpu",
            r.ema_decay > 0,
        ]
    )


def training_step(run: RunSpec, splits, batch: int, device: torch.device) -> Callable[[], None]:
    """One training step of `run` as fit takes it, on one fixed batch of real training images."""
    recipe = run.recipe
    channels_last = recipe.channels_last and device.type == "cpu"  # fit's rule
    mean, std = input_normalisation(recipe, splits)
    x, y = next(
        iter(
            Batches(
                splits.train_images[:batch],
                splits.train_labels[:batch],
                batch,
                mean,
                std,
                device=device,
                channels_last=channels_last,
            )
        )
    )
    torch.manual_seed(0)
    model = build_model(run.model, splits.num_classes).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, recipe)
    augment = get_augmentation(recipe.augment)
    ema = make_ema(model, recipe)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    model.train()

    def step() -> None:
        inputs = augment(x) if augment is not None else x
        with autocast_context(device, recipe.precision):
            loss = loss_fn(model(inputs), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)

    return step


def interleaved(
    steps_by_key: dict[str, Callable[[], None]],
    items: dict[str, int],
    rounds: int,
    steps: int,
    warmup: int,
    device: torch.device,
) -> dict[str, measure.Timing]:
    """Round-robin timing: every round times `steps` steps of each key, starting with a different one each round."""
    for step in steps_by_key.values():
        for _ in range(warmup):
            step()
    seconds: dict[str, list[float]] = {key: [] for key in steps_by_key}
    keys = list(steps_by_key)

    def run(step: Callable[[], None]) -> None:
        for _ in range(steps):
            step()

    for r in range(rounds):
        measure.log(f"--- round {r + 1}/{rounds}")
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            seconds[key].append(measure.timed(lambda step=steps_by_key[key]: run(step), device)[1])
    return {key: measure.Timing(s, steps * items[key]) for key, s in seconds.items()}


def main(argv=None) -> None:
    p = measure.parser(__doc__, all_cores=True)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds over all models (default 5; --quick: 2)")
    p.add_argument("--steps", type=int, default=5, help="training steps per model per round (default 5; --quick: 1)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first (default 2; --quick: 1)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 1, 1
    if min(args.rounds, args.steps) < 1:
        p.error("--rounds and --steps must be at least 1")
    measure.set_threads(args.threads)
    device = pick_device(args.device)
    info = measure.machine(device)
    if measure.busy_warning(info):
        measure.log(measure.busy_warning(info))
    data = load_emnist(*data_location(args.data, args.split), download=False)
    splits = make_splits(data, args.seed)
    del data
    train_images, val_images = len(splits.train_labels), len(splits.val_labels)

    runs = listed_runs()
    steps_by_key, items = {}, {}
    for run, _ in runs:
        key = step_key(run, device)
        if key not in steps_by_key:
            items[key] = min(run.recipe.batch_size, 32) if args.quick else run.recipe.batch_size
            steps_by_key[key] = training_step(run, splits, items[key], device)
    measure.log(f"--- {len(steps_by_key)} training steps for {len(runs)} runs; warm-up")
    timings = interleaved(steps_by_key, items, args.rounds, args.steps, args.warmup, device)

    report_rate = timings[step_key(REPORT_FINAL, device)].rate[0]
    rows = []
    for run, names in runs:
        timing = timings[step_key(run, device)]
        rate, std = timing.rate
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
                "img_per_s": timing.rates,
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
    print(text)
    columns = [k for k in rows[0] if k != "img_per_s"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    payload = {
        "benchmark": "models",
        "machine": info,
        "settings": measure.settings(args),
        "data": {**splits.provenance, **splits.sizes()},
        "results": rows,
    }
    for path in measure.write_results(
        args.out,
        measure.result_stem("benchmark_models", device, args.quick),
        text,
        payload,
        extra={".csv": buffer.getvalue()},
    ):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
