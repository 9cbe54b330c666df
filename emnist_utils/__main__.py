"""Entry point of `python -m emnist_utils`: hands over to the one command line (emnist_utils.cli)."""

import sys

from .cli import main

sys.exit(main())
