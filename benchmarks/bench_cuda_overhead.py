"""Loop overhead of the fixed-step samplers on CUDA, eager and as a replayed CUDA graph (``GraphedSampler``).

    PYTHONPATH=. python3 benchmarks/bench_cuda_overhead.py [--models mlp,digits] [--reps 30] [--run outputs/main]

For each model and sampler (20 NFE each, no final denoising), interleaved per repetition, host clock around a
synchronized region:

* ``bare``: the sampler's NFE model calls on one fixed input, launched back to back (eager);
* ``eager``: the sampler as is; ``graph``: the sampler through :class:`GraphedSampler` (a replay);
* ``bare graph``: the same NFE model calls captured in one graph and replayed.

Ratios are medians over the repetitions: eager / bare (the issue's per-step overhead), graph / bare (what the graph
path costs against eager calls) and graph / bare graph (the loop's own GPU work: its updates and draws). The last
column is the largest relative difference between the graph's and the eager loop's samples from the same start and
generator seed. Models: ``mlp``, the 2-D MLP score (3 x 256, 4096 points; a launch-bound call), and ``digits``, the
main job's trained DDPM++ (``--run``, 0.19 M parameters, 64 images of 8 x 8; random weights of the same net when no
run is given). Writes ``benchmarks/results/cuda_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from ab_overhead import CASES  # label -> (sampler, options), 20 NFE each

from scoresde.nets import MLP
from scoresde.sampling import get_sampler
from scoresde.sampling.graphs import GraphedSampler
from scoresde.score import ScoreModel
from scoresde.sde import VPSDE

OUT = Path(__file__).resolve().parent / "results"


def build(kind: str, run: str | None, device: torch.device):
    """``(sde, model, shape, label)`` of a benchmark model on ``device``."""
    torch.manual_seed(0)
    if kind == "mlp":
        sde = VPSDE()
        model = ScoreModel(MLP((2,), hidden=256, depth=3), sde)
        with torch.no_grad():  # off the zero-initialised output layer: a zero score makes Langevin's step infinite
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=0.05)
        return sde, model.to(device).eval(), (4096, 2), "MLP 3x256 (random weights)"
    if kind != "digits":
        raise ValueError(f"unknown model {kind!r} (mlp, digits)")
    if run:
        from scoresde.loading import load_model

        loaded = load_model(run)
        model = loaded.model.to(device).eval()
        return loaded.sde, model, (64, *loaded.data_shape), f"digits DDPM++ ({run})"
    from scoresde.nets import NCSNpp

    sde = VPSDE()
    net = NCSNpp(data_shape=(1, 8, 8), nf=16, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.0,
                 resblock_type="biggan", embedding_type="positional", init_scale=0.0)  # fmt: skip
    model = ScoreModel(net, sde, "edm", "t", 999.0, sigma_data=0.5).to(device).eval()
    return sde, model, (64, 1, 8, 8), "digits DDPM++ (random weights)"


def measure(sde, model, shape, device: torch.device, reps: int) -> tuple[float, list[dict]]:
    """Median bare call (ms) and one row per sampler."""
    sync = torch.cuda.synchronize
    x0 = torch.randn(shape, device=device)
    t = torch.full((shape[0],), 0.5, device=device)
    gen = torch.Generator(device)

    def clock(fn) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start

    rows, bare_ms = [], []
    with torch.no_grad():
        for _ in range(10):
            model(x0, t)
        for label, (name, options) in CASES.items():
            sampler = get_sampler(name, denoise=False, **options)
            graphed = GraphedSampler(sampler)

            def eager(sampler=sampler):
                return sampler(sde, model, shape, generator=gen.manual_seed(1), device=device, x_init=x0)

            def replay(graphed=graphed):
                return graphed(sde, model, shape, generator=gen.manual_seed(1), device=device, x_init=x0)

            ref, got = eager(), replay()  # the capture happens here
            nfe = ref.nfe
            diff = float((got.samples - ref.samples).abs().max() / ref.samples.abs().max())
            bare_graph = torch.cuda.CUDAGraph()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    model(x0, t)
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(bare_graph):
                for _ in range(nfe):
                    model(x0, t)

            def bare(nfe=nfe):
                for _ in range(nfe):
                    model(x0, t)

            r_eager, r_graph, r_floor = [], [], []
            for _ in range(reps):
                tb = clock(bare)
                te = clock(eager)
                tg = clock(replay)
                tf = clock(bare_graph.replay)
                r_eager.append(te / tb)
                r_graph.append(tg / tb)
                r_floor.append(tg / tf)
                bare_ms.append(tb / nfe * 1e3)
            med = statistics.median
            rows.append({"sampler": label, "nfe": nfe, "eager/bare": med(r_eager), "graph/bare": med(r_graph),
                         "graph/bare graph": med(r_floor), "max rel diff": diff, "nfe graph": got.nfe})  # fmt: skip
            del bare_graph
    return statistics.median(bare_ms), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,digits")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--run", default=None, help="run directory of the digits model (default: random weights)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_cuda_overhead.py needs a CUDA device")
    device = torch.device("cuda", torch.cuda.current_device())
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "models": {}}
    for kind in args.models.split(","):
        sde, model, shape, label = build(kind, args.run, device)
        bare, rows = measure(sde, model, shape, device, args.reps)
        results["models"][kind] = {"label": label, "shape": list(shape), "bare_ms": bare, "rows": rows}
        print(f"\n### {label}, batch {tuple(shape)}, {results['device']} (bare call {bare:.3f} ms), "
              f"median of {args.reps}\n")  # fmt: skip
        print("| sampler | NFE | eager / bare | graph / bare | graph / bare graph | graph vs eager (max rel) |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['sampler']} | {r['nfe']} | {r['eager/bare']:.3f} | {r['graph/bare']:.3f} | "
                  f"{r['graph/bare graph']:.3f} | {r['max rel diff']:.1e} |")  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cuda_overhead.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
