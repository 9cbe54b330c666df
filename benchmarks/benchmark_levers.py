"""The compute bound of the report's final model (REPORT_FINAL, batch 290) and the levers that move it: images/s
of forward + backward + Adam step (fit's foreach Adam) on ONE batch already in memory and normalised, so no data
pipeline is involved, for

- fp32, contiguous memory layout (the baseline);
- fp32, channels_last (what `fit` uses on the CPU);
- bf16 autocast, channels_last (fast only where the CPU has bf16 instructions, or on a GPU);
- torch.compile, fp32 channels_last (with --compile; compiles on the first step, which is reported apart).

The levers are measured in one interleaved run: after each lever's untimed warm-up, every round times --steps
steps of each lever in turn (the order rotating from round to round), so that a change in machine load hits all
of them alike. img/s is the mean ± std over --rounds rounds, and each lever is shown as a ratio to the baseline.
Results go to benchmarks/results/benchmark_levers_<device>.{txt,json}.

    .venv/bin/python benchmarks/benchmark_levers.py [--rounds 5] [--steps 10] [--compile] [--threads N] [--quick]

A measurement, not a test: it prints the machine it ran on (CPU, cores, torch version, GPU) and warns when the
load average says the machine was busy; run it on an otherwise idle one. --quick: batches of 32, one step per round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import measure
import torch
from tabulate import tabulate
from torch import nn

from emnist_utils.core.data import data_location, load_emnist
from emnist_utils.core.registry import build_model
from emnist_utils.core.splits import Batches, make_splits
from emnist_utils.core.training import autocast_context, make_optimizer, seed_everything
from emnist_utils.experiments.trials import REPORT_FINAL


@dataclass(frozen=True)
class Lever:
    name: str
    channels_last: bool = False
    precision: str = "fp32"
    compile: bool = False


LEVERS = (
    Lever("fp32 contiguous"),
    Lever("fp32 channels_last", channels_last=True),
    Lever("bf16 autocast, channels_last", channels_last=True, precision="bf16"),
)
COMPILE_LEVER = Lever("torch.compile, fp32 channels_last", channels_last=True, compile=True)


def training_step(lever: Lever, splits, batch: int, device: torch.device) -> Callable[[], None]:
    """One training step of the report's model on one fixed batch: everything fit does per batch but the data."""
    batches = Batches(
        splits.train_images[:batch],
        splits.train_labels[:batch],
        batch,
        splits.mean,
        splits.std,
        device=device,
        channels_last=lever.channels_last,
    )
    x, y = next(iter(batches))
    seed_everything(0)
    model = build_model(REPORT_FINAL.model, splits.num_classes).to(device)
    if lever.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, REPORT_FINAL.recipe)
    forward = torch.compile(model) if lever.compile else model
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step() -> None:
        with autocast_context(device, lever.precision):
            loss = loss_fn(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"


def measure_levers(
    levers, splits, batch: int, device: torch.device, rounds: int, steps: int, warmup: int
) -> list[dict]:
    results = {lever.name: {"lever": lever.name, "seconds": []} for lever in levers}
    ready: dict[str, Callable[[], None]] = {}
    for lever in levers:
        measure.log(f"--- warming up: {lever.name}")
        try:
            step = training_step(lever, splits, batch, device)
            _, results[lever.name]["first_step_seconds"] = measure.timed(step, device)  # compilation, if any
            for _ in range(warmup):
                step()
            ready[lever.name] = step
        except Exception as exc:  # torch.compile needs a working compiler tool chain: say so, do not abort
            results[lever.name]["error"] = _error(exc)

    def run(step: Callable[[], None]) -> None:
        for _ in range(steps):
            step()

    names = list(ready)
    for r in range(rounds):
        measure.log(f"--- round {r + 1}/{rounds}")
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:  # a different lever goes first in every round
            try:
                results[name]["seconds"].append(measure.timed(lambda step=ready[name]: run(step), device)[1])
            except Exception as exc:
                results[name]["error"] = _error(exc)
                names.remove(name)
    items = steps * batch
    for entry in results.values():
        if entry["seconds"]:
            entry.update(measure.Timing(entry["seconds"], items).as_dict())
    return list(results.values())


def main(argv=None) -> None:
    p = measure.parser(__doc__)
    measure.interleaved_options(p, "lever", rounds=5, steps=10, warmup=5)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (compiles for tens of seconds)")
    args = measure.parse(p, argv)
    device, info = measure.start(args)
    batch = 32 if args.quick else REPORT_FINAL.recipe.batch_size
    data = load_emnist(*data_location(args.data, args.split), download=False)
    splits = make_splits(data, args.seed)  # the normalisation of the whole training split; one batch is used
    del data
    levers = LEVERS + ((COMPILE_LEVER,) if args.compile else ())
    results = measure_levers(levers, splits, batch, device, args.rounds, args.steps, args.warmup)

    base = results[0].get("img_per_s_mean")
    rows = [
        [
            r["lever"],
            measure.format_rate(r.get("img_per_s_mean"), r.get("img_per_s_std")),
            f"{r['img_per_s_mean'] / base:.2f}x" if base and r.get("img_per_s_mean") else "-",
            f"{r['first_step_seconds']:.2f}" if "first_step_seconds" in r else "-",
            r.get("error", ""),
        ]
        for r in results
    ]
    text = "\n".join(
        [
            measure.describe_machine(info),
            measure.describe_data(splits, "; one training batch is used"),
            f"Model:   REPORT_FINAL {REPORT_FINAL.model.arch} {tuple(REPORT_FINAL.model.shape().values())}, "
            f"batch {batch}, fit's optimiser (Adam, foreach)"
            + (" (--quick: the numbers mean nothing)" if args.quick else ""),
            "",
            f"Compute bound: forward + backward + Adam on one batch of {batch} in memory; {args.rounds} interleaved "
            f"rounds of {args.steps} steps per lever after {args.warmup} warm-up steps; img/s mean ± std over rounds",
            tabulate(
                rows, headers=["lever", "img/s", "vs fp32 contiguous", "first step s", "error"], disable_numparse=True
            ),
        ]
    )
    results = {"levers": results, "memory": measure.peak_memory(device)}
    measure.publish("levers", args, device, info, text, splits.provenance, results)


if __name__ == "__main__":
    main()
