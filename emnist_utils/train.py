"""Train the final model with a named recipe from the command line, test it once, save the weights:

    python -m emnist_utils.train --recipe fast [--seed 0] [--data DIR --split NAME] [--out results/fast_model.pt]

Recipes (emnist_utils.training.RECIPES): `report` (Adam 1e-3, batch 290, 20 epochs) and `fast`
(OneCycle to lr 3e-3, batch 256, label smoothing 0.1, 6 epochs). The run is cached and resumable like the notebooks'.
"""
from __future__ import annotations

import argparse
import sys
import time

from .data import DataError, add_data_arguments, load_emnist, make_splits
from .evaluation import accuracy, predict
from .experiments import run_trial, save_weights
from .paths import resolve
from .profiles import get_profile
from .training import RECIPES, pick_device


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="fast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default=None, help="full (default, or EMNIST_PROFILE) or smoke")
    add_data_arguments(parser)
    parser.add_argument("--out", default=None, help="weights file to write (default: none)")
    parser.add_argument("--retrain", action="store_true", help="ignore a cached result of the same run")
    args = parser.parse_args(argv)
    try:
        data = load_emnist(args.data, args.split)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    profile = get_profile(args.profile)
    splits = make_splits(data, args.seed, **profile.limits())
    cfg, recipe = RECIPES[args.recipe]
    device = pick_device()
    started = time.perf_counter()
    result = run_trial(cfg, splits, profile, seed=args.seed, recipe=recipe, retrain=args.retrain, keep_model=True,
                       device=device)
    wall = time.perf_counter() - started
    test_acc = accuracy(predict(result.model.to(device), splits.test_images, splits.mean, splits.std, device=device),
                        splits.test_labels)
    print(f"recipe {args.recipe}: {result.history.epochs} epochs, training {result.train_seconds:.0f} s "
          f"(this call {wall:.0f} s; cached runs take ~0 s)")
    print(f"data: emnist-{data.split} sha256 {data.short_checksum}, profile {profile.name}, seed {args.seed}")
    print(f"validation accuracy {result.val_acc:.2f}%, test accuracy {test_acc:.2f}%")
    if args.out:
        out = resolve(args.out)
        save_weights(result.model, result.config, out, provenance=splits.provenance, mean=splits.mean,
                     std=splits.std, extra={"recipe": recipe.as_dict()})
        print(f"weights written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
