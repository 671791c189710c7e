"""The project's side-by-side benchmarks at two commits, alternating, in one run.

Each commit is checked out into a temporary git worktree; every benchmark script of that
commit runs there (its `_common.py` puts that tree's `python/` first on the path, so it times
that commit's needle), old and new in turn, `--rounds` times. Each script prints its own
needle / PyTorch ratio table; this driver collects the ratio of every case and prints the
median ratio at each commit and the gain (above 1: the new commit does better against
PyTorch than the old one did; for time and memory ratios that is old / new).

`--same-scripts` runs the new commit's scripts in both trees (copied over the old tree's
benchmarks/), so both commits are measured the same way: a script fixed since the old commit
(bench_train times each framework in its own process now) then measures the old code
fairly too. The scripts use the course API only, which both commits have.

Run: python benchmarks/compare_commits.py OLD [NEW=HEAD] [--scripts bench_ops,bench_train,...]
     [--rounds 2] [--data-dir DIR] [--same-scripts]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a row of _common.print_table: case, two values (%.3f), unit, ratio ("0.91x"), target
ROW = re.compile(r"^(\S.*?)\s+(-?\d+\.\d{3})\s+(-?\d+\.\d{3})\s+(\S+)\s+(\d+\.\d+)x(\s|$)")
ARGS = {"bench_train": ["--samples", "12800", "--repeat", "1"]}
# units whose ratio is needle's time or memory over PyTorch's (lower is better); the others
# are throughputs (higher is better)
LOWER_IS_BETTER = {"us/op", "ms", "s", "MiB", "MB"}


def worktree(commit: str, where: str) -> str:
    path = os.path.join(where, commit.replace("/", "_"))
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, commit],
                   check=True, capture_output=True)
    return path


def ratios(tree: str, script: str, data_dir) -> dict:
    cmd = [sys.executable, os.path.join(tree, "benchmarks", script + ".py"), *ARGS.get(script, [])]
    if script == "bench_train" and data_dir:
        cmd += ["--data-dir", data_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tree)
    if proc.returncode != 0:
        print(f"  {script} at {tree}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    out = {}
    for line in proc.stdout.splitlines():
        m = ROW.match(line)
        if m and not line.startswith("case"):
            out[m.group(1).strip()] = (float(m.group(5)), m.group(4) in LOWER_IS_BETTER)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new", nargs="?", default="HEAD")
    ap.add_argument("--scripts", default="bench_ops,bench_train,bench_conv,bench_seq")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data-dir", default=os.environ.get("NEEDLE_FASHION_MNIST"))
    ap.add_argument("--same-scripts", action="store_true",
                    help="run the new commit's benchmark scripts in both trees")
    args = ap.parse_args()
    scripts = [s.strip() for s in args.scripts.split(",") if s.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {c: worktree(c, tmp) for c in (args.old, args.new)}
        if args.same_scripts:
            shutil.copytree(os.path.join(trees[args.new], "benchmarks"),
                            os.path.join(trees[args.old], "benchmarks"), dirs_exist_ok=True)
        try:
            got = {(c, s): {} for c in trees for s in scripts}
            lower_better = {}
            for r in range(args.rounds):
                for s in scripts:
                    for c, tree in trees.items():
                        print(f"round {r + 1}/{args.rounds}: {s} at {c}", flush=True)
                        for case, (ratio, lower) in ratios(tree, s, args.data_dir).items():
                            got[(c, s)].setdefault(case, []).append(ratio)
                            lower_better[case] = lower
            print(f"\nneedle / PyTorch ratio as each script prints it (time, memory: lower is "
                  f"better; throughput: higher), medians of {args.rounds} alternating rounds: "
                  f"{args.old} (old) and {args.new} (new); gain > 1: the new commit does "
                  f"better against PyTorch")
            print(f"{'script':12s} {'case':50s} {'old':>7s} {'new':>7s} {'gain':>7s}")
            for s in scripts:
                old, new = got[(args.old, s)], got[(args.new, s)]
                for case in [c for c in new if c in old]:
                    a, b = statistics.median(old[case]), statistics.median(new[case])
                    gain = a / b if lower_better[case] else b / a
                    print(f"{s:12s} {case[:50]:50s} {a:7.2f} {b:7.2f} {gain:6.2f}x")
                for case in [c for c in new if c not in old]:
                    print(f"{s:12s} {case[:50]:50s} {'-':>7s} {statistics.median(new[case]):7.2f}")
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree],
                               capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
