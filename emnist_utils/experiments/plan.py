"""What a batch of runs will cost here, before any of it starts: a short measured calibration of each model's
training throughput on this machine and device, and the time that implies for every run not yet cached.

Calibration trains each distinct (model, batch, augmentation, precision, layout) for a few steps on random
inputs, after a warm-up, with the thread count the runs will use; results are kept per machine, torch version,
device and thread count in `<cache>/calibration.json`, so a second plan is instant.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.augment import get_augmentation
from ..core.paths import write_text_atomic
from ..core.registry import build_model
from ..core.training import autocast_context, make_ema, make_optimizer
from .runner import format_duration
from .spec import RunSpec

CALIBRATION_STEPS = 4  # timed training steps per model (after two warm-up steps)
VALIDATION_SPEEDUP = 3.0  # inference costs about a third of a training step per image


def machine_description() -> str:
    """The CPU model (from /proc/cpuinfo where there is one), its core count and the torch version."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cpus, torch {torch.__version__}"


def cost_key(spec: RunSpec, device: torch.device, threads: int) -> str:
    """What a training step's cost depends on: runs with the same key are timed once."""
    r = spec.recipe
    return json.dumps(
        [
            spec.model.as_dict(),
            r.batch_size,
            r.optimizer,
            r.augment,
            r.precision,
            r.channels_last,
            r.ema_decay > 0,
            str(device),
            threads,
        ]
    )


def training_step(
    spec: RunSpec, num_classes: int, device: torch.device, batch: int | None = None
) -> Callable[[], None]:
    """One training step of `spec`'s model and recipe as `fit` takes it (forward, backward, optimiser step, batch
    augmentation, weight average) on a fixed random batch (of `batch` images, default the recipe's): what its
    training costs, whatever the pixel values."""
    torch.manual_seed(0)
    recipe = spec.recipe
    batch = batch or recipe.batch_size
    channels_last = recipe.channels_last and device.type == "cpu"  # fit's rule
    model = build_model(spec.model, num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = make_optimizer(model, recipe)
    augment = get_augmentation(recipe.augment)
    ema = make_ema(model, recipe)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    x = torch.randn(batch, 1, 28, 28, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device)

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


def time_steps(step: Callable[[], None], batch_size: int, steps: int, device: torch.device) -> float:
    """Images per second over `steps` calls of `step`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch_size / (time.perf_counter() - started)


def measure_throughput(spec: RunSpec, num_classes: int, device: torch.device, steps: int = CALIBRATION_STEPS) -> float:
    """Training images per second of `spec`'s model and recipe, timed after two warm-up steps."""
    return interleaved_rates([spec], num_classes, device, rounds=1, steps=steps)[0][0]


def interleaved_rates(
    specs: Sequence[RunSpec],
    num_classes: int,
    device: torch.device,
    rounds: int = 3,
    steps: int = CALIBRATION_STEPS,
    warmup: int = 2,
    batch: int | None = None,
) -> list[list[float]]:
    """Training images per second of each spec in each of `rounds` rounds: every round times `steps` steps of
    each model in turn, starting with a different one each round, so that a change in the machine's load hits
    every model alike and the ratios stay fair."""
    steppers = [training_step(s, num_classes, device, batch) for s in specs]
    for step in steppers:
        for _ in range(warmup):
            step()
    rates: list[list[float]] = [[] for _ in specs]
    order = list(range(len(specs)))
    for r in range(rounds):
        shift = r % len(order)
        for i in order[shift:] + order[:shift]:
            rates[i].append(time_steps(steppers[i], batch or specs[i].recipe.batch_size, steps, device))
    return rates


def interleaved_throughput(
    specs: Sequence[RunSpec], num_classes: int, device: torch.device, rounds: int = 3, steps: int = CALIBRATION_STEPS
) -> list[tuple[float, float]]:
    """(mean, std) of `interleaved_rates` for each spec."""
    return [
        (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
        for v in interleaved_rates(specs, num_classes, device, rounds=rounds, steps=steps)
    ]


@dataclass
class Calibration:
    """Measured throughputs (images/s) by cost key, kept in a JSON file per machine."""

    path: Path
    device: torch.device
    threads: int

    def _load(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def throughputs(self, specs: Sequence[RunSpec], num_classes: int, progress=None) -> dict[str, float]:
        """{run key: images/s} for `specs`, measuring what this machine has not measured before."""
        stored = self._load()
        machine = stored.setdefault(machine_description(), {})
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        out, measured = {}, 0
        try:
            for spec in specs:
                cost = cost_key(spec, self.device, self.threads)
                if cost not in machine:
                    if progress is not None:
                        progress(
                            f"calibrating {spec.model.arch} {spec.model.c1}/{spec.model.c2}/{spec.model.hidden}"
                            f" batch {spec.recipe.batch_size}"
                        )
                    machine[cost] = measure_throughput(spec, num_classes, self.device)
                    measured += 1
                out[spec.key()] = machine[cost]
        finally:
            torch.set_num_threads(previous)
        if measured:
            write_text_atomic(self.path, json.dumps(stored, indent=1))
        return out

    def baseline(self, ident: list, measure: Callable[[], float]) -> float:
        """A baseline's estimated seconds (`ident`: its name and sizes), measured once per machine."""
        stored = self._load()
        machine = stored.setdefault(machine_description(), {})
        key = json.dumps(["baseline", *ident])
        if key not in machine:
            machine[key] = measure()
            write_text_atomic(self.path, json.dumps(stored, indent=1))
        return machine[key]

    def interleaved(self, specs: Sequence[RunSpec], num_classes: int, rounds: int = 3) -> list[tuple[float, float]]:
        """`interleaved_throughput` of `specs`, measured once per machine and kept, so that re-running a notebook
        shows the same numbers (and leaves its committed outputs unchanged)."""
        stored = self._load()
        machine = stored.setdefault(machine_description(), {})
        key = json.dumps(["interleaved", rounds, [cost_key(s, self.device, self.threads) for s in specs]])
        if key not in machine:
            previous = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                machine[key] = interleaved_throughput(specs, num_classes, self.device, rounds=rounds)
            finally:
                torch.set_num_threads(previous)
            write_text_atomic(self.path, json.dumps(stored, indent=1))
        return [tuple(v) for v in machine[key]]


def estimate_seconds(spec: RunSpec, images_per_second: float, train_images: int, val_images: int) -> float:
    """Training time of a run at a measured throughput: its epochs over the training part plus a validation
    pass per epoch."""
    per_epoch = train_images / images_per_second + val_images / (images_per_second * VALIDATION_SPEEDUP)
    return spec.recipe.epochs * per_epoch


def schedule_wall_time(durations: Sequence[float], jobs: int) -> float:
    """Wall time of running `durations` on `jobs` workers, longest first (how the runner's pool behaves)."""
    workers = [0.0] * max(1, jobs)
    for d in sorted(durations, reverse=True):
        workers[workers.index(min(workers))] += d
    return max(workers) if durations else 0.0


def describe_estimate(seconds: float) -> str:
    return format_duration(seconds) if math.isfinite(seconds) else "?"
