"""Test accuracy of saved weights on any EMNIST-format split:

    python -m emnist_utils.evaluate --weights results/final_model.pt [--data DIR --split NAME]

The weights file carries its config, its normalisation constants and the checksum of the data it was
trained on; the output says whether the evaluated data is that same data or different data.
"""
from __future__ import annotations

import argparse
import sys

from .data import DataError, add_data_arguments, load_emnist
from .evaluation import accuracy, predict
from .experiments import WeightsError, load_weights
from .paths import resolve
from .training import pick_device


def output_classes(model) -> int:
    """How many classes a model predicts, whatever its layer names: the width of its last linear layer."""
    import torch

    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="a .pt file written by save_weights")
    add_data_arguments(parser)
    parser.add_argument("--allow-unverified", action="store_true", help="accept data no checksum vouches for")
    args = parser.parse_args(argv)
    try:
        model, meta = load_weights(resolve(args.weights))
        data = load_emnist(args.data, args.split, allow_unverified=args.allow_unverified or None)
    except (WeightsError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if meta.get("mean") is None:
        print("error: the weights file has no normalisation constants", file=sys.stderr)
        return 2
    outputs = output_classes(model)
    if data.num_classes != outputs:
        print(f"error: the model predicts {outputs} classes, split '{data.split}' has "
              f"{data.num_classes}", file=sys.stderr)
        return 2
    device = pick_device()
    predictions = predict(model.to(device), data.test_images, meta["mean"], meta["std"], device=device)
    acc = accuracy(predictions, data.test_labels)
    trained_on = meta["provenance"]
    same = trained_on.get("checksum") == data.checksum
    print(f"weights: {args.weights} ({meta['config'].get('arch')}, trained on {trained_on.get('dataset')} "
          f"sha256 {trained_on.get('checksum', '')[:12]})")
    print(f"data:    emnist-{data.split} test split, {len(data.test_labels):,} images, sha256 {data.short_checksum}"
          f" ({'the data it was trained on' if same else 'DIFFERENT data from training'})")
    print(f"test accuracy: {acc:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
