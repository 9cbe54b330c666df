"""`python -m emnist_utils`: fetch (when needed) and verify the data, then describe it."""
import argparse
import sys

from .data import DataError, load_emnist

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--data", default=None, help="data folder (default EMNIST_DATA or data/)")
parser.add_argument("--split", default=None, help="EMNIST split (default EMNIST_SPLIT or balanced)")
args = parser.parse_args()
try:
    print(load_emnist(args.data, args.split).describe())
except DataError as exc:
    sys.exit(f"error: {exc}")
