"""`python -m emnist_utils`: fetch (when needed) and verify the data, then describe it."""
import argparse
import sys

from .data import DataError, add_data_arguments, load_emnist

parser = argparse.ArgumentParser(description=__doc__)
add_data_arguments(parser)
args = parser.parse_args()
try:
    print(load_emnist(args.data, args.split).describe())
except DataError as exc:
    sys.exit(f"error: {exc}")
