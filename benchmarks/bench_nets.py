"""Throughput of the score networks: forward and forward+backward images/s, and parameter counts.

    python benchmarks/bench_nets.py                  # small presets on CPU (+ CIFAR-10 presets on CUDA)
    python benchmarks/bench_nets.py --presets ncsnpp cifar10_ddpmpp_continuous --batch 64 --device cuda --amp

Prints a table and writes a bar plot to benchmarks/results/bench_nets_<device>.png.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["ncsnpp", "ddpmpp", "digits_ncsnpp", "digits_ddpmpp"]
CIFAR = ["cifar10_ncsnpp_continuous", "cifar10_ddpmpp_continuous"]


@dataclass
class Row:
    preset: str
    shape: tuple[int, ...]
    params: int
    batch: int
    fwd_ips: float
    fwd_bwd_ips: float


def timed(fn, device: torch.device, min_time: float, min_iters: int = 3) -> float:
    """Seconds per call: one warm-up call, then at least ``min_iters`` calls and ``min_time`` seconds."""
    fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    n, start = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - start < min_time:
        fn()
        n += 1
    sync()
    return (time.perf_counter() - start) / n


def bench(
    name: str, batch: int, device: torch.device, amp: bool, min_time: float, channels_last: bool, compile: bool
) -> Row:
    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
    shape = (1 if name.startswith("digits") else 3, cfg.image_size, cfg.image_size)
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.net, data_shape=shape).to(device)
    params = sum(p.numel() for p in net.parameters())
    x = torch.rand(batch, *shape, device=device)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    model = torch.compile(net) if compile else net
    label = torch.full((batch,), 0.5 if cfg.time_input == "sigma" else 500.0, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    def forward():
        with torch.no_grad(), autocast:
            model(x, label)

    def forward_backward():
        with autocast:
            loss = model(x, label).float().square().mean()
        loss.backward()
        net.zero_grad(set_to_none=True)

    net.eval()
    fwd = timed(forward, device, min_time)
    net.train()
    fwd_bwd = timed(forward_backward, device, min_time)
    return Row(name, shape, params, batch, batch / fwd, batch / fwd_bwd)


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.5))
    idx = range(len(rows))
    ax.bar([i - 0.2 for i in idx], [r.fwd_ips for r in rows], width=0.4, label="forward")
    ax.bar([i + 0.2 for i in idx], [r.fwd_bwd_ips for r in rows], width=0.4, label="forward+backward")
    ax.set_xticks(list(idx), [f"{r.preset}\n{r.shape[1]}x{r.shape[2]}, {r.params / 1e6:.2f}M" for r in rows])
    ax.set_ylabel("images / s")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=None, help="conf/model preset names")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 32 CPU, 128 CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = args.presets or (SMALL + CIFAR if device.type == "cuda" else SMALL)
    batch = args.batch or (128 if device.type == "cuda" else 32)
    rows = [bench(p, batch, device, args.amp, args.min_time, args.channels_last, args.compile) for p in presets]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    title = f"{where}, batch {batch}" + (", bf16 autocast" if args.amp else ", float32")
    title += ", channels_last" * args.channels_last + ", compiled" * args.compile
    print(f"# {title}")
    print("| preset | sample shape | parameters | forward img/s | forward+backward img/s |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        shape = "x".join(map(str, r.shape))
        print(f"| {r.preset} | {shape} | {r.params:,} | {r.fwd_ips:,.1f} | {r.fwd_bwd_ips:,.1f} |")
    tag = "_amp" * args.amp + "_cl" * args.channels_last + "_compiled" * args.compile
    out = ROOT / "benchmarks" / "results" / f"bench_nets_{device.type}{tag}.png"
    plot(rows, out, title)
    print(f"plot: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
