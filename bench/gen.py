#!/usr/bin/env python3
"""Generate a benchmark tree of pseudo-random (incompressible) files.

Deterministic: the same arguments give byte-identical trees (seeded PRNG),
so runs on different days compare the same data.

    gen.py ROOT --files N --dirs D --size BYTES [--big-files K --big-size BYTES] [--seed S]

Layout: ROOT/dNNNN/fNNNNNNN.dat (N files spread evenly over D directories)
        ROOT/large/bigNN.dat      (K big files)
"""
import argparse
import os
import random
import sys


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--files", type=int, required=True)
    p.add_argument("--dirs", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--big-files", type=int, default=0)
    p.add_argument("--big-size", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()

    rng = random.Random(a.seed)
    os.makedirs(a.root, exist_ok=False)
    dirs = max(1, a.dirs)
    per_dir = -(-a.files // dirs)  # ceil
    for i in range(a.files):
        d = os.path.join(a.root, f"d{i // per_dir:04d}")
        if i % per_dir == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:07d}.dat"), "wb") as f:
            f.write(rng.randbytes(a.size))
    if a.big_files:
        big = os.path.join(a.root, "large")
        os.makedirs(big, exist_ok=True)
        chunk = 8 << 20
        for k in range(a.big_files):
            with open(os.path.join(big, f"big{k:02d}.dat"), "wb") as f:
                left = a.big_size
                while left > 0:
                    n = min(chunk, left)
                    f.write(rng.randbytes(n))
                    left -= n
    return 0


if __name__ == "__main__":
    sys.exit(main())
