"""Loop overhead of two source trees side by side: sampler wall time / the same number of bare model calls.

Runs the measurement alternately with ``BEFORE`` and ``AFTER`` first on ``PYTHONPATH`` (separate processes, so each
imports its own ``scoresde``; the caller's entries follow, for dependencies installed outside site-packages),
``--rounds`` times; each round times every sampler ``--reps`` times interleaved with bare calls of the exact
8-Gaussians VP score on ``--points`` points (1 thread, 20 NFE) and keeps the median ratio.
Prints a markdown table of the medians over the rounds. One round of one sampler spreads by a few percent on a
shared machine, hence the rounds. Only the public API is used, so any two revisions compare::

    git worktree add /tmp/before <commit>
    python benchmarks/ab_overhead.py --before /tmp/before --after . --points 512 --rounds 12
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# sampler label -> (name, options) with 20 NFE each
CASES = {
    "euler_maruyama": ("euler_maruyama", {"steps": 20}),
    "reverse_diffusion": ("reverse_diffusion", {"steps": 20}),
    "ancestral": ("ancestral", {"steps": 20}),
    "ddim": ("ddim", {"steps": 20}),
    "ddim eta=1": ("ddim", {"steps": 20, "eta": 1.0}),
    "heun": ("heun", {"steps": 10}),
    "pc + langevin": ("pc", {"steps": 10, "corrector": "langevin", "snr": 0.16}),
    "dpm_solver": ("dpm_solver", {"steps": 20}),
    "unipc": ("unipc", {"steps": 20}),
    "pndm F": ("pndm", {"steps": 11}),
    "pndm S": ("pndm", {"steps": 20, "variant": "s"}),
}


def worker(points: int, reps: int, labels: list[str]) -> dict[str, float]:
    """Median over ``reps`` of (sampler wall time) / (its NFE bare calls), per sampler, in this process."""
    import time

    import torch

    from scoresde.data import eight_gaussians_mixture
    from scoresde.sampling import get_sampler
    from scoresde.sde import VPSDE

    torch.set_num_threads(1)
    sde = VPSDE()
    score = eight_gaussians_mixture().score_fn(sde)
    x, t = torch.randn(points, 2), torch.full((points,), 0.5)
    out = {}
    with torch.no_grad():
        for _ in range(5):
            score(x, t)
        for label in labels:
            name, options = CASES[label]
            sampler = get_sampler(name, denoise=False, **options)

            def run(sampler=sampler):
                return sampler(sde, score, (points, 2), torch.Generator().manual_seed(0))

            run()
            ratios = []
            for _ in range(reps):
                t0 = time.perf_counter()
                nfe = run().nfe
                t1 = time.perf_counter()
                for _ in range(nfe):
                    score(x, t)
                ratios.append((t1 - t0) / (time.perf_counter() - t1))
            out[label] = statistics.median(ratios)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="source tree (a directory holding scoresde/) measured first in each round")
    ap.add_argument("--after", default=".", help="source tree measured second (default: this one)")
    ap.add_argument("--points", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--samplers", default=",".join(CASES), help=f"comma-separated, from: {', '.join(CASES)}")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    labels = args.samplers.split(",")
    unknown = [s for s in labels if s not in CASES]
    if unknown:
        ap.error(f"unknown samplers {unknown}; choose from {list(CASES)}")
    if args.worker:
        print(json.dumps(worker(args.points, args.reps, labels)))
        return
    if not args.before:
        ap.error("--before is required")
    trees = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    for which, tree in trees.items():
        if not (tree / "scoresde").is_dir():
            ap.error(f"--{which} {tree} has no scoresde/ package")
    results: dict[str, dict[str, list[float]]] = {which: {label: [] for label in labels} for which in trees}
    script = str(Path(__file__).resolve())
    cmd = [sys.executable, script, "--worker", "--points", str(args.points), "--reps", str(args.reps),
           "--samplers", args.samplers]  # fmt: skip
    for r in range(args.rounds):
        for which, tree in trees.items():
            path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))  # the tree's scoresde first
            env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
            line = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=tree).stdout
            for label, ratio in json.loads(line.strip().splitlines()[-1]).items():
                results[which][label].append(ratio)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    med = statistics.median
    print(f"\n### Loop overhead, {args.points} points, medians of {args.rounds} rounds of {args.reps}\n")
    print("| sampler | before | after |")
    print("|---|---|---|")
    for label in labels:
        print(f"| {label} | {med(results['before'][label]):.3f} | {med(results['after'][label]):.3f} |")


if __name__ == "__main__":
    main()
