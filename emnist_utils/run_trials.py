"""Run the report's trial tables from the command line, filling the same cache the notebooks read.

    python -m emnist_utils.run_trials --tables 1.1 1.2 [--profile full] [--seed 0]

Useful to train everything in the background (or on a bigger machine) before stepping through the
notebooks, which then load the cached results in seconds. Interrupted runs resume where they stopped.
"""
from __future__ import annotations

import argparse

from .data import add_data_arguments, load_emnist, make_splits
from .experiments import run_trial
from .models import FINAL_CONFIG, TABLE_1_1, TABLE_1_2
from .profiles import get_profile

TABLES = {"final": [FINAL_CONFIG], "1.1": TABLE_1_1, "1.2": TABLE_1_2}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="+", default=["final", "1.1", "1.2"], choices=sorted(TABLES))
    parser.add_argument("--profile", default=None, help="full (default, or EMNIST_PROFILE) or smoke")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trials", nargs="+", type=int, help="only these trial numbers of each table (1-based)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the fastest present)")
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    data = load_emnist(args.data, args.split)
    splits = make_splits(data, args.seed, **profile.limits())
    print(data.describe(), f"\nprofile: {profile.name}, sizes: {splits.sizes()}", flush=True)
    for table in args.tables:
        for number, cfg in enumerate(TABLES[table], start=1):
            if args.trials and number not in args.trials:
                continue
            result = run_trial(cfg, splits, profile, seed=args.seed, keep_model=True, device=args.device)
            print(f"{cfg.name}: val acc {result.val_acc:.2f}% after {result.history.epochs} epochs, "
                  f"{result.train_seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
