"""`python -m pneumoscan ...`: the same command line as the `pneumoscan` entry point."""

import sys

from .cli import main

sys.exit(main())
