"""Training throughput (optimizer steps per second) of the small presets on this machine's CPU (or GPU).

    python benchmarks/bench_train.py [--steps 20] [--threads 1 2] [--out outputs/bench_train.png]

Each row builds the trainer exactly as ``train.py`` does (Hydra composition of conf/train.yaml plus the row's
overrides), runs one warm-up step, then times ``--steps`` optimizer steps. Prints a markdown table and writes a
bar chart. Presets whose model config is missing (e.g. before the NCSN++/DDPM++ presets land) are skipped.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESETS = {
    "mlp / toy (B=128)": ["model=mlp", "data=toy", "trainer.batch_size=128"],
    "mlp / digits 8x8 (B=128)": ["model=mlp", "data=digits", "trainer.batch_size=128"],
    "digits_ddpmpp / digits 8x8 (B=64)": ["model=digits_ddpmpp", "data=digits", "trainer.batch_size=64"],
    "digits_ncsnpp / digits 8x8 (B=64)": ["model=digits_ncsnpp", "sde=ve", "data=digits", "trainer.batch_size=64"],
    "ddpmpp / digits 16x16 (B=64)": ["model=ddpmpp", "data=digits", "data.image_size=16", "trainer.batch_size=64"],
}


def measure(overrides: list[str], steps: int, threads: int) -> tuple[float, int]:
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    from scoresde.training import TrainConfig, Trainer, build_setup, parse_train_config

    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("train", overrides=[*overrides, f"trainer.num_threads={threads}", "trainer.progress=false"])
    cfg = parse_train_config(cfg)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, build_setup(cfg), run_dir)
        trainer.train_step(0)
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        for k in range(steps):
            trainer.train_step(k + 1)
        sync()
        rate = steps / (time.perf_counter() - t0)
        return rate, sum(p.numel() for p in trainer.model.parameters())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench_train.png"))
    args = parser.parse_args(argv)
    rows = []
    for name, overrides in PRESETS.items():
        model = overrides[0].split("=", 1)[1]
        if not (ROOT / "conf" / "model" / f"{model}.yaml").exists():
            print(f"skip {name}: conf/model/{model}.yaml not found")
            continue
        for threads in args.threads:
            rate, params = measure(overrides, args.steps, threads)
            rows.append((name, threads, params, rate))
            print(f"{name:40s} threads={threads}  {rate:8.2f} it/s", flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"\nTraining throughput on {device} (torch {torch.__version__}), {args.steps} timed steps\n")
    print("| preset | threads | parameters | it/s | s per 1000 steps |")
    print("|---|---|---|---|---|")
    for name, threads, params, rate in rows:
        print(f"| {name} | {threads} | {params:,} | {rate:.2f} | {1000 / rate:.0f} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
    labels = [f"{n} [{t} thr]" for n, t, _, _ in rows]
    ax.barh(labels, [r for *_, r in rows], color="C0")
    ax.set_xscale("log")
    ax.set_xlabel("training steps per second (log scale)")
    ax.invert_yaxis()
    ax.set_title(f"Training throughput ({device})")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
