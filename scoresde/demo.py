"""Demo: the marginals p_t of an analytic Gaussian mixture under each SDE, drawn as a PNG grid.

``python -m scoresde.demo --out outputs/marginals.png``. Rows are the SDEs (VP, sub-VP, VE, cosine VP), columns
times ``t``; each panel is the exact density ``p_t`` of the 2-D '8 Gaussians' mixture, computed in closed form.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from scoresde.data import eight_gaussians_mixture
from scoresde.io import save_figure
from scoresde.sde import VESDE, VPSDE, CosineVPSDE, SubVPSDE

SDES = {
    "VP": VPSDE(),
    "sub-VP": SubVPSDE(),
    "VE (sigma_max=10)": VESDE(sigma_max=10.0),
    "cosine VP": CosineVPSDE(),
}
TIMES = (0.0, 0.05, 0.2, 0.5, 1.0)


def draw_marginals(out: str | Path, times=TIMES, resolution: int = 160) -> Path:
    """Write the figure to ``out`` and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mix = eight_gaussians_mixture()
    fig, axes = plt.subplots(len(SDES), len(times), figsize=(2.4 * len(times), 2.4 * len(SDES)))
    for row, (name, sde) in enumerate(SDES.items()):
        for col, t in enumerate(times):
            tt = torch.tensor([t], dtype=torch.float64)
            alpha, sigma = float(sde.marginal_alpha(tt)), float(sde.marginal_std(tt))
            half = 3.5 * alpha + 3 * sigma + 0.5
            g = torch.linspace(-half, half, resolution, dtype=torch.float64)
            xx, yy = torch.meshgrid(g, g, indexing="xy")
            pts = torch.stack([xx.flatten(), yy.flatten()], dim=1)
            dens = mix.log_prob(pts, torch.full((pts.shape[0],), t, dtype=torch.float64), sde).exp()
            ax = axes[row, col]
            ax.imshow(
                dens.reshape(resolution, resolution), origin="lower", extent=(-half, half, -half, half), cmap="magma"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t = {t:g}")
            if col == 0:
                ax.set_ylabel(name)
            ax.text(0.03, 0.03, f"±{half:.3g}", color="w", fontsize=7, transform=ax.transAxes)
    fig.suptitle("Exact marginals p_t of the 8-Gaussians mixture")
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/marginals.png", help="PNG file to write")
    args = parser.parse_args(argv)
    path = draw_marginals(args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
