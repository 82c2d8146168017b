"""Writing results: PNG grids of image samples, scatter plots of 2-D samples, ``.npz`` arrays, JSON lines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch


def image_grid(x01: torch.Tensor, nrow: int | None = None, padding: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile a batch ``(B, C, H, W)`` in [0, 1] into one uint8 image ``(H', W', C)`` (C = 1 squeezed)."""
    if x01.ndim != 4:
        raise ValueError(f"image_grid needs a batch (B, C, H, W), got shape {tuple(x01.shape)}")
    b, c, h, w = x01.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    ncol = math.ceil(b / nrow)
    grid = torch.full((c, ncol * (h + padding) + padding, nrow * (w + padding) + padding), float(pad_value))
    for k in range(b):
        r, q = divmod(k, nrow)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top : top + h, left : left + w] = x01[k].detach().float().cpu().clamp(0, 1)
    a = (grid * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return a[..., 0] if c == 1 else a


def save_image_grid(x01: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """PNG grid of images in [0, 1]; ``scale`` enlarges each pixel (nearest neighbour) for tiny images."""
    from PIL import Image

    a = image_grid(x01, nrow=nrow)
    img = Image.fromarray(a)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def save_scatter(
    points: torch.Tensor, path: str | Path, reference: torch.Tensor | None = None, title: str = ""
) -> Path:
    """Scatter plot PNG of 2-D samples (and optionally reference data in grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    if reference is not None:
        r = reference.detach().cpu().reshape(reference.shape[0], -1)
        ax.scatter(r[:, 0], r[:, 1], s=1, c="0.75", label="data")
    p = points.detach().cpu().reshape(points.shape[0], -1)
    ax.scatter(p[:, 0], p[:, 1], s=1, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """A matplotlib figure laid out tightly, written to ``path`` (folders created) and closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def save_npz(path: str | Path, **arrays: torch.Tensor | np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v for k, v in arrays.items()})
    return path


def append_jsonl(path: str | Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line torn by a kill
    return out


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Drop records past ``max_step`` (written by a run killed after its last checkpoint)."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= max_step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def plot_metrics(metrics: str | Path, out: str | Path) -> Path:
    """Training loss and held-out loss against the step, from a run's ``metrics.jsonl``, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_jsonl(metrics)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("loss", "training loss (window mean)"), ("eval_loss", "held-out loss (EMA)")):
        pts = [(r["step"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o" if key == "eval_loss" else None, ms=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("DSM loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# --- reading user arrays --------------------------------------------------------------------------------------
def read_array(path: str | Path, what: str) -> torch.Tensor:
    """A ``.npy`` array or the array of a ``.npz`` (its only one, or ``arr_0``), read without pickle."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what}={str(path)!r} does not exist")
    try:
        a = np.load(p, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"{what}={str(path)!r} is not a readable .npy/.npz array file: {err}") from None
    if hasattr(a, "files"):  # .npz: its only array, or arr_0
        keys = list(a.files)
        a = a["arr_0"] if "arr_0" in keys else a[keys[0]] if len(keys) == 1 else None
        if a is None:
            raise ValueError(f"{what}={str(path)!r} holds several arrays {keys}; save the one to use as arr_0")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{what}={str(path)!r}: expected a real numeric array, got dtype {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(a))


def as_images01(a: torch.Tensor, what: str, channels: int) -> torch.Tensor:
    """Images as float ``(N, C, H, W)`` in [0, 1]: uint8 or float input, channels first or last (``(N, H, W)`` for one
    channel)."""
    x = a.float() / 255 if a.dtype == torch.uint8 else a.float()
    if x.ndim == 3 and channels == 1:
        x = x[:, None]
    if x.ndim == 4 and x.shape[1] != channels and x.shape[-1] == channels:
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{what} images must be (N, {channels}, H, W) or (N, H, W, {channels}); got {tuple(a.shape)}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"{what} images hold {bad} NaN / infinite values")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{what} images must lie in [0, 1] (or be uint8); got [{x.min():.3g}, {x.max():.3g}]")
    return x.contiguous()


def as_mask(a: torch.Tensor, what: str, data_shape: tuple[int, ...]) -> tuple[torch.Tensor, bool]:
    """A 0/1 mask (1 = known) for images of ``data_shape`` ``(C, H, W)``: one for every image (``(H, W)``,
    ``(1, H, W)`` or ``(C, H, W)``) or one per image (``(N, H, W)``, ``(N, 1 or C, H, W)``). Returns the mask as
    ``(1 or C, H, W)`` resp. ``(N, 1 or C, H, W)`` floats and whether it is per image."""
    from scoresde.sampling.inverse import check_mask  # the one check of mask values, shared with the library

    check_mask(a, what)
    m = a.float()
    c, spatial = data_shape[0], tuple(data_shape[1:])
    if m.ndim == 2 and tuple(m.shape) == spatial:
        return m[None], False
    if m.ndim == 3 and tuple(m.shape[1:]) == spatial:
        return (m, False) if m.shape[0] in (1, c) else (m[:, None], True)
    if m.ndim == 4 and tuple(m.shape[2:]) == spatial and m.shape[1] in (1, c):
        return m, True
    raise ValueError(
        f"{what}: a mask of shape {tuple(m.shape)} does not fit images {tuple(data_shape)}; use "
        f"{spatial}, (1 or {c}, *{spatial}), or one per image (N, *{spatial}) / (N, 1 or {c}, *{spatial})"
    )
