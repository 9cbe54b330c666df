"""Train the studies of notebooks 05 and 06 from the command line, filling the cache the notebooks read.

    python -m emnist_utils.run_studies --studies depth_study beyond_ablation [--profile full] [--shard 0/4]

`--shard i/n` takes every n-th job starting at i, so n processes can share one machine (a GPU has room
for several of these small models at once) and one cache (entries are written atomically).
"""
from __future__ import annotations

import argparse

from .data import add_data_arguments, load_emnist, make_splits
from .experiments import run_trial
from .profiles import get_profile
from .studies import STUDIES, jobs


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
        if not 0 <= index < count:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like i/n with 0 <= i < n, got {text!r}") from None
    return index, count


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", nargs="+", default=sorted(STUDIES), choices=sorted(STUDIES))
    parser.add_argument("--profile", default=None, help="full (default, or EMNIST_PROFILE) or smoke")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation split")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), help="i/n: run every n-th job from i")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: the fastest present)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_data_arguments(parser)
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    data = load_emnist(args.data, args.split)
    splits = make_splits(data, args.split_seed, **profile.limits())
    todo = jobs([STUDIES[name] for name in args.studies])
    index, count = args.shard
    mine = todo[index::count]
    print(f"{data.describe()}\nprofile: {profile.name}; shard {index}/{count}: {len(mine)} of {len(todo)} runs",
          flush=True)
    for variant, seed in mine:
        result = run_trial(variant.config, splits, profile, seed=seed, recipe=variant.recipe,
                           keep_model=variant.keep_model, device=args.device, progress=not args.quiet)
        print(f"{variant.label} [seed {seed}]: val acc {result.val_acc:.2f}%, {result.train_seconds:.0f} s "
              f"on {result.device}", flush=True)


if __name__ == "__main__":
    main()
