#!/usr/bin/env python
"""Time and memory of bmtpt's SVGD step: a thin wrapper of `bmtpt bench speed` (options: --help).

    python benchmarks/speed.py --backbone t5-base-shape --out benchmarks/results/speed-t5-base-cpu.json
"""

import sys

from bmtpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "speed", *sys.argv[1:]]))
