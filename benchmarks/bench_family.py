"""The rest of the family on MNIST-5k at equal training time: pixel U-Net vs DiT vs latent DiT vs a cascade.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_family.py --budget 240 --methods unet dit --json /tmp/a.json
    PYTHONPATH=. .venv/bin/python benchmarks/bench_family.py --report /tmp/a.json /tmp/b.json

Every method trains with the same small loop (DSM loss of scoresde.losses on the VP SDE, Adam with warm-up, gradient
clipping, EMA 0.999, batch 64, one thread) for the same budget of *CPU seconds of this process* (``time.process_time``:
on a shared machine wall time would measure the neighbours), then draws ``--n`` samples with DPM-Solver (20 steps)
and is scored by the Fréchet distance in the features of the MNIST classifier (scoresde.mnist_metrics) against the
500 held-out images. The loop is our own because the trainer stops after a number of steps, not of CPU seconds; it
uses the library's pieces (losses, EMA, samplers, conditioned(), SuperResNet, the autoencoder), the ones
``train.py latent.autoencoder=...`` and ``train.py task=superres`` train with.

Methods: ``unet`` (model=ddpmpp at 28x28), ``dit`` (model=dit_mnist: 4x4 patches), ``latent_dit`` (the autoencoder's
4x7x7 latents, DiT with 1x1 patches; the autoencoder's own training time is reported apart), ``cascade`` (a U-Net at
14x14 for half the budget, then a 2x SuperResNet around a U-Net of half the width for the other half; also scored on
real 14x14 inputs, which measures the super-resolution stage alone). Prints markdown tables; --report also writes
benchmarks/results/family_quality.png.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from scoresde import registry
from scoresde.conditioning import conditioned
from scoresde.data import from_model_range, load_dataset, to_model_range
from scoresde.ema import EMA
from scoresde.losses import get_loss
from scoresde.mnist_metrics import frechet_mnist_distance, mnist_split
from scoresde.nets import SuperResNet
from scoresde.nets.superres import downsample
from scoresde.sampling import get_sampler
from scoresde.score import ScoreModel
from scoresde.sde import VPSDE

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
METHODS = ("unet", "dit", "latent_dit", "cascade")
BATCH = 64


def unet(shape, ch_mult=(1, 2, 2), attn=(7,), nf: int = 32) -> torch.nn.Module:
    """model=ddpmpp (conf/model/ddpmpp.yaml) for ``shape``, with levels that fit 28x28 / 14x14."""
    node = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "ddpmpp.yaml").net)
    node.update(ch_mult=list(ch_mult), attn_resolutions=list(attn), nf=nf)
    return registry.build(node, "model.net", data_shape=list(shape))


def dit(shape, patch: int) -> torch.nn.Module:
    """model=dit_mnist (conf/model/dit_mnist.yaml) with the given patch size."""
    node = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "dit_mnist.yaml").net)
    node["patch_size"] = patch
    return registry.build(node, "model.net", data_shape=list(shape))


def score_model(net: torch.nn.Module, sde) -> ScoreModel:
    return ScoreModel(net, sde, parameterization="eps", time_input="t", time_scale=999.0)


def train_for(model: ScoreModel, batch_fn, budget: float, lr: float, seed: int = 0) -> tuple[ScoreModel, dict]:
    """Train until ``budget`` CPU seconds are spent; ``batch_fn(idx_gen)`` -> (x, conditioning dict or None)."""
    torch.manual_seed(seed)
    loss_fn = get_loss("dsm", model.sde)
    ema = EMA(model, 0.999)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / 100, 1.0))
    gen = torch.Generator().manual_seed(seed)
    start, steps, losses = time.process_time(), 0, []
    model.train()
    while time.process_time() - start < budget:
        x, cond = batch_fn(gen)
        draws = loss_fn.draw(x.shape, gen, x.device, x.dtype)
        target = model if cond is None else conditioned(model, **cond)
        loss = loss_fn.per_example(target, x, draws).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(model)
        losses.append(float(loss.detach()))
        steps += 1
    spent = time.process_time() - start
    tail = losses[-50:]
    stats = {"steps": steps, "cpu_s": spent, "it_per_cpu_s": steps / spent, "final_loss": sum(tail) / len(tail)}
    return ema.module.eval(), stats


def pixel_batches(x01: torch.Tensor):
    """Random training batches of images in [0, 1], uniformly dequantized (256 levels), scaled to [-1, 1]."""

    def fn(gen):
        idx = torch.randint(0, len(x01), (BATCH,), generator=gen)
        u = torch.rand((BATCH, *x01.shape[1:]), generator=gen)
        return to_model_range((x01[idx] * 255 + u) / 256, True), None

    return fn


@torch.no_grad()
def sample(score_fn, sde, shape, n: int, seed: int = 1) -> tuple[torch.Tensor, float]:
    """``n`` samples with DPM-Solver (20 steps) and the CPU seconds they took."""
    start = time.process_time()
    res = get_sampler("dpm_solver", steps=20)(sde, score_fn, (n, *shape), generator=torch.Generator().manual_seed(seed))
    return res.samples, time.process_time() - start


def run_unet(args, data, sde) -> dict:
    model, stats = train_for(score_model(unet((1, 28, 28)), sde), pixel_batches(data.train), args.budget, 2e-3)
    x, t = sample(model, sde, (1, 28, 28), args.n)
    return {**stats, "fd": frechet_mnist_distance(from_model_range(x, True)), "sample_cpu_s": t,
            "params": n_params(model)}  # fmt: skip


def run_dit(args, data, sde) -> dict:
    model, stats = train_for(score_model(dit((1, 28, 28), 4), sde), pixel_batches(data.train), args.budget, 1e-3)
    x, t = sample(model, sde, (1, 28, 28), args.n)
    return {**stats, "fd": frechet_mnist_distance(from_model_range(x, True)), "sample_cpu_s": t,
            "params": n_params(model)}  # fmt: skip


def run_latent_dit(args, data, sde) -> dict:
    from scoresde.latent import encode_dataset, train_autoencoder

    start = time.process_time()
    ae = train_autoencoder(data.train, data.test, channels=(16, 32), steps=args.ae_steps, batch_size=BATCH, lr=5e-3)
    ae_time = time.process_time() - start
    lat = encode_dataset(ae.model, data)
    z = lat.train

    def batches(gen):
        return z[torch.randint(0, len(z), (BATCH,), generator=gen)], None

    model, stats = train_for(score_model(dit(lat.data_shape, 1), sde), batches, args.budget, 1e-3)
    zs, t = sample(model, sde, lat.data_shape, args.n)
    with torch.no_grad():
        images = ae.model.decode(zs).clamp(0, 1)
        recon = ae.model.decode(ae.model.encode(data.test[: args.n])).clamp(0, 1)
    return {**stats, "fd": frechet_mnist_distance(images), "sample_cpu_s": t, "params": n_params(model),
            "ae_cpu_s": ae_time, "ae_test_mse": ae.test_mse, "ae_baseline_mse": ae.baseline_mse,
            "fd_ae_reconstructions": frechet_mnist_distance(recon)}  # fmt: skip


def run_cascade(args, data, sde) -> dict:
    low_train = downsample(data.train, 2)  # what data.image_size=14 gives the base model
    base, base_stats = train_for(score_model(unet((1, 14, 14), (1, 2), (7,)), sde), pixel_batches(low_train),
                                 args.budget / 2, 2e-3)  # fmt: skip
    sr_net = SuperResNet(unet((3, 28, 28), nf=16), 2, aug_max=0.3)  # half width: 4x cheaper steps
    hi = pixel_batches(data.train)

    def sr_batches(gen):
        x, _ = hi(gen)
        return x, sr_net.training_conditioning(downsample(x, 2), gen)

    sr, sr_stats = train_for(score_model(sr_net, sde), sr_batches, args.budget / 2, 2e-3)
    low, t_base = sample(base, sde, (1, 14, 14), args.n)
    level = 0.1  # a little augmentation at sampling time, inside the trained range (Ho et al. 2022, Sec. 4.4)
    cond = sr.net.sampling_conditioning(low.clamp(-1, 1), level, torch.Generator().manual_seed(2))
    x, t_sr = sample(conditioned(sr, **cond), sde, (1, 28, 28), args.n, seed=3)
    real_low = to_model_range(downsample(data.test[: args.n], 2), True)
    cond_real = sr.net.sampling_conditioning(real_low, level, torch.Generator().manual_seed(2))
    x_real, _ = sample(conditioned(sr, **cond_real), sde, (1, 28, 28), args.n, seed=3)
    return {
        "steps": f"{base_stats['steps']} + {sr_stats['steps']}",
        "cpu_s": base_stats["cpu_s"] + sr_stats["cpu_s"],
        "it_per_cpu_s": f"{base_stats['it_per_cpu_s']:.2f} / {sr_stats['it_per_cpu_s']:.2f}",
        "final_loss": sr_stats["final_loss"],
        "fd": frechet_mnist_distance(from_model_range(x, True)),
        "fd_base_14_upsampled": frechet_mnist_distance(from_model_range(low, True)),
        "fd_sr_of_real_14": frechet_mnist_distance(from_model_range(x_real, True)),
        "sample_cpu_s": t_base + t_sr,
        "params": f"{n_params(base)} + {n_params(sr)}",
    }


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def report(paths: list[str]) -> None:
    rows = {}
    for p in paths:
        rows.update(json.loads(Path(p).read_text()))
    meta = rows.pop("_meta", {})
    split = mnist_split()
    n = meta.get("n", 500)
    floor = frechet_mnist_distance(split.train_images[:n])
    noise = frechet_mnist_distance(torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    print(f"\n### MNIST-5k at {meta.get('budget', '?')} CPU-s of training each ({meta.get('n', '?')} samples, "
          "DPM-Solver 20 steps; Fréchet distance² to the 500 held-out images)\n")  # fmt: skip
    print("| method | parameters | steps | it / CPU-s (batch 64) | last loss | FD | sampling CPU-s |")
    print("|---|---|---|---|---|---|---|")
    for name in METHODS:
        if name not in rows:
            continue
        r = rows[name]
        its = r["it_per_cpu_s"] if isinstance(r["it_per_cpu_s"], str) else f"{r['it_per_cpu_s']:.2f}"
        print(f"| {name} | {r['params']} | {r['steps']} | {its} | {r['final_loss']:.4f} | {r['fd']:.1f} | "
              f"{r['sample_cpu_s']:.0f} |")  # fmt: skip
    print(f"\nReference levels: real training images {floor:.1f}; uniform noise {noise:.0f}.")
    if "latent_dit" in rows:
        r = rows["latent_dit"]
        mse = f"held-out MSE {r['ae_test_mse']:.4f} vs {r['ae_baseline_mse']:.4f} for the mean image"
        print(f"Latent DiT: the autoencoder took {r['ae_cpu_s']:.0f} CPU-s more ({mse}); its reconstructions alone "
              f"score {r['fd_ae_reconstructions']:.1f}.")  # fmt: skip
    if "cascade" in rows:
        r = rows["cascade"]
        print(f"Cascade: the 14x14 base samples (upsampled by the metric) score {r['fd_base_14_upsampled']:.1f}; the "
              f"super-resolution stage given real 14x14 images scores {r['fd_sr_of_real_14']:.1f}.")  # fmt: skip
    _plot(rows, floor, meta)


def _plot(rows: dict, floor: float, meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in METHODS if m in rows]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(names, [rows[m]["fd"] for m in names], color="tab:blue")
    ax.axhline(floor, color="k", ls="--", lw=1, label="real vs real")
    ax.set_yscale("log")
    ax.set_ylabel("Fréchet distance² (MNIST features)")
    ax.set_title(f"MNIST-5k, {meta.get('budget', '?')} CPU-s of training each")
    ax.legend()
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / "family_quality.png", dpi=120)
    print(f"\nwrote {OUT / 'family_quality.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=240.0, help="CPU seconds of training per method")
    ap.add_argument("--n", type=int, default=500, help="samples per method (the held-out split has 500)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--ae-steps", type=int, default=1000, help="autoencoder steps for latent_dit")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--report", nargs="+", help="print the tables of earlier --json files (and plot)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.report:
        report(args.report)
        return
    data, sde = load_dataset("mnist"), VPSDE()
    results: dict = {"_meta": {"budget": args.budget, "n": args.n}}
    for name in args.methods:
        print(f"[bench_family] {name} ...", flush=True)
        results[name] = globals()[f"run_{name}"](args, data, sde)
        print(f"[bench_family] {name}: {json.dumps(results[name])}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    if not math.isnan(args.budget) and not args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
