"""Run the benchmark from a checkout: `python benchmarks/run.py [options]` is `musicviz-mlx bench`.

    python benchmarks/run.py --quick                 # CI: a small model, seconds
    python benchmarks/run.py --model random:sdxs-512-0.9 --levels float32,8bit,4bit --batches 1,4
"""

import sys

from mlx_musicviz.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
