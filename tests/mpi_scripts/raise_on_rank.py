"""Run under `mpiexec -n 2` by tests/test_distributed.py: rank `--fail-rank` raises after the
first all-reduce while the others block in the next one (-1: every rank raises); the job must
end, non-zero, at once, and report the failure once.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))

import numpy as np  # noqa: E402

import needle.distributed as dist  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fail-rank", type=int, default=1)
    args = ap.parse_args()
    dist.init()
    dist.install_excepthook()
    dist.allreduce_array(np.ones(4))
    if args.fail_rank in (dist.rank(), -1):  # -1: every rank fails the same way
        raise RuntimeError("injected failure in the training step")
    dist.allreduce_array(np.ones(4))  # the other ranks would wait here forever
    dist.barrier()


if __name__ == "__main__":
    main()
