"""Speed figures of every runtime side by side: a thin alias of `pneumoscan bench`.

    python benchmarks/bench.py [--quick] [--format json]
"""

import sys

from pneumoscan.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
