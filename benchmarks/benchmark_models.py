"""What each model of the project costs to train on this machine: images/s of training steps (forward,
backward, optimiser step, plus the batch augmentation where the recipe has one), measured side by side in one
run on batches already in memory, and the training time that implies for the epochs its study uses.

    python benchmarks/benchmark_models.py [--batches 20] [--device cpu] [--threads N]

A measurement script, not a test; run it on a quiet machine. Synthetic inputs (random normalised images):
the cost of these models does not depend on pixel values.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from emnist_utils.augment import get_augmentation  # noqa: E402
from emnist_utils.models import FINAL_CONFIG, build_model, count_parameters  # noqa: E402
from emnist_utils.studies import COMPACT_CONFIG, COMPACT_SMALL_CONFIG, MODERN_RECIPE  # noqa: E402
from emnist_utils.training import REPORT_RECIPE, Recipe, make_optimizer, pick_device  # noqa: E402

TRAIN_IMAGES = 61_528  # the stand-in's training part; EMNIST balanced has 100,000

CASES = [
    ("report model, report recipe", FINAL_CONFIG, REPORT_RECIPE),
    ("compact CNN, no augmentation", COMPACT_CONFIG, MODERN_RECIPE),
    ("compact CNN + affine + erasing", COMPACT_CONFIG, Recipe(schedule="onecycle", label_smoothing=0.1,
                                                             augment="affine+erasing")),
    ("smaller compact CNN + affine + erasing", COMPACT_SMALL_CONFIG, Recipe(schedule="onecycle", label_smoothing=0.1,
                                                                            augment="affine+erasing")),
]


def steps_per_second(cfg, recipe, device, batches: int) -> float:
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    channels_last = recipe.channels_last and device.type == "cpu"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg, recipe)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    augment = get_augmentation(recipe.augment)
    x = torch.randn(cfg.batch_size, 1, 28, 28, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 47, (cfg.batch_size,), device=device)

    def step():
        inputs = augment(x) if augment is not None else x
        loss = loss_fn(model(inputs), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batches / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20, help="timed training steps per model")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.batches} timed steps per model; epoch = {TRAIN_IMAGES:,} images")
    print(f"{'model':40s} {'params':>9s} {'batch':>5s} {'img/s':>8s} {'epochs':>6s} {'train time':>11s}")
    for label, cfg, recipe in CASES:
        rate = steps_per_second(cfg, recipe, device, args.batches) * cfg.batch_size
        minutes = cfg.epochs * TRAIN_IMAGES / rate / 60
        print(f"{label:40s} {count_parameters(build_model(cfg)):9,d} {cfg.batch_size:5d} {rate:8,.0f} "
              f"{cfg.epochs:6d} {minutes:9.1f} min", flush=True)


if __name__ == "__main__":
    main()
