"""The serving latency suite (same as `clif-serve bench`): writes benchmarks/results/bench.{json,md} and plots.

    python benchmarks/serving_suite.py                      # starts a local server on the tiny model
    python benchmarks/serving_suite.py --url HOST:PORT --export DIR
"""

import sys

from clif_serve.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
