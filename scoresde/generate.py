"""Generate samples in batches with per-sample seeds, and write them the way evaluation tools read them.

Sample ``k`` of a run with seed ``s`` is drawn from its own generator seeded by ``(s, k)`` (as EDM's per-seed
generators), so it is the same whatever the batch size, and ``first=k, n=1`` reproduces it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scoresde.distributed import DistInfo, gather_to_main, interleave, my_share
from scoresde.sampling import GraphedSampler, Sampler
from scoresde.sampling.base import progress_iter
from scoresde.sampling.graphs import cuda_device
from scoresde.sde import ScoreFn
from scoresde.utils import derived_seed


@dataclass
class GenerateResult:
    """``samples`` in the model's space ``(n, *data_shape)``; ``seeds`` ``(n,)`` the per-sample seeds; ``nfe`` the
    score evaluations of one batch (every batch makes the same number)."""

    samples: torch.Tensor
    seeds: np.ndarray
    nfe: int


def sample_seed(seed: int, k: int) -> int:
    """The seed of sample ``k`` of a run with seed ``seed`` (independent streams for every pair)."""
    return derived_seed(seed, k)


def generate(
    score_fn: ScoreFn,
    sde,
    data_shape: Sequence[int],
    n: int,
    sampler: Sampler,
    seed: int = 0,
    first: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool | None = None,
    dist: DistInfo | None = None,
    cuda_graph: bool = False,
) -> GenerateResult | None:
    """Samples ``first, ..., first + n - 1`` of the run with ``seed``, in batches of ``batch_size``.

    ``cuda_graph``: each batch replays the sampler's loop as a CUDA graph
    (:class:`~scoresde.sampling.graphs.GraphedSampler`; captured once per batch shape). The starting points still
    come from the per-sample generators, so a deterministic sampler gives the same samples as without the graph;
    a stochastic one draws its loop noise from one CUDA generator per batch, seeded by the batch's first sample
    seed, so its samples then depend on the batch size as well.

    Under ``torchrun`` (``dist`` with several ranks) the batches are dealt round-robin to the ranks and gathered on
    rank 0, which returns the whole result (the same as one process: sample ``k`` depends only on ``(seed, k)`` and
    its batch); the other ranks return ``None``. The progress bar is rank 0's.
    """
    if n < 1 or batch_size < 1 or first < 0:
        raise ValueError(
            f"need n >= 1, batch_size >= 1 and first >= 0; got n={n}, batch_size={batch_size}, first={first}"
        )
    seeds = np.array([sample_seed(seed, k) for k in range(first, first + n)], dtype=np.uint64)
    graphed, loop_gen = None, None
    if cuda_graph:  # refused here, before any batch, where the sampler or the device cannot be graphed
        graphed = GraphedSampler(sampler)
        loop_gen = torch.Generator(cuda_device(device))

    def batch(start: int, stop: int) -> tuple[torch.Tensor, int]:
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[start:stop]]
        shape = (stop - start, *data_shape)
        with torch.no_grad():
            if graphed is None:
                res = sampler(sde, score_fn, shape, generator=gens, device=device)
            else:
                x_init = sde.prior_sampling(shape, generator=gens, device=device, dtype=getattr(sampler, "dtype", None))
                loop_gen.manual_seed(int(seeds[start]))
                res = graphed(sde, score_fn, shape, generator=loop_gen, device=device, x_init=x_init)
        return res.samples, res.nfe

    done = run_batches(n, batch_size, batch, dist, progress)
    return None if done is None else GenerateResult(done[0], seeds, done[1])


def run_batches(
    n: int,
    batch_size: int,
    fn: Callable[[int, int], tuple[torch.Tensor, int]],
    dist: DistInfo | None = None,
    progress: bool | None = None,
) -> tuple[torch.Tensor, int] | None:
    """``fn(start, stop)`` -> ``(samples, nfe)`` over the batches of ``range(n)``, dealt round-robin to the ranks of
    ``dist`` and gathered in order on rank 0: ``(all samples on the CPU, nfe of the first batch)`` there, ``None`` on
    the other ranks. Each batch is computed as in one process, so the result does not depend on the number of
    processes."""
    dist = dist or DistInfo()
    starts = list(range(0, n, batch_size))
    mine = my_share(starts, dist)
    out, nfe = [], 0
    for start in progress_iter(mine, progress if dist.is_main else False, "sampling", total=len(mine)):
        samples, calls = fn(start, min(start + batch_size, n))
        out.append(samples.cpu())
        nfe = nfe or calls
    shares = gather_to_main((out, nfe), dist)
    if shares is None:
        return None
    return torch.cat(interleave([share for share, _ in shares], len(starts))), shares[0][1]


def to_uint8_nhwc(images01: torch.Tensor) -> np.ndarray:
    """Images ``(N, C, H, W)`` in [0, 1] as ``(N, H, W, C)`` uint8, the layout FID tools read from ``.npz``."""
    x = (images01.clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def save_samples(
    out_dir: str | Path,
    result: GenerateResult,
    to_unit: Callable[[torch.Tensor], torch.Tensor] | None,
    reference: torch.Tensor | None = None,
    stem: str = "samples",
) -> dict[str, Path]:
    """Write ``<stem>.npz`` and ``<stem>.png``: the one sample format of the toolkit (``sample.py``, the trainer's
    previews), read back by :func:`read_samples` and by the metrics.

    ``<stem>.npz`` holds ``arr_0`` — images as uint8 ``(N, H, W, C)`` (the layout FID tools read), or points as float32
    ``(N, D)`` — and ``seeds`` ``(N,)``, the per-sample seeds. ``<stem>.png`` is an image grid, or a scatter plot for
    2-D points (over ``reference`` data in grey). ``to_unit`` maps model-space images to [0, 1]; ``None`` marks
    low-dimensional data."""
    from scoresde.io import save_image_grid, save_scatter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"npz": out / f"{stem}.npz", "png": out / f"{stem}.png"}
    x = result.samples
    if to_unit is not None:
        images = to_unit(x.float())
        np.savez(paths["npz"], arr_0=to_uint8_nhwc(images), seeds=result.seeds)
        save_image_grid(images[:256], paths["png"], scale=max(1, 128 // images.shape[-1]))
    else:
        np.savez(paths["npz"], arr_0=x.reshape(x.shape[0], -1).float().numpy(), seeds=result.seeds)
        if x[0].numel() == 2:
            title = f"{len(x)} samples ({result.nfe} NFE)"
            save_scatter(x.reshape(-1, 2), paths["png"], reference=reference, title=title)
        else:
            paths.pop("png")
    return paths


def read_samples(path: str | Path) -> torch.Tensor:
    """Samples written by :func:`save_samples`: images as float ``(N, C, H, W)`` in [0, 1], points as ``(N, D)``."""
    from scoresde.io import read_array

    a = read_array(path, "samples")
    if a.dtype == torch.uint8 and a.ndim == 4:
        return a.permute(0, 3, 1, 2).float() / 255
    return a.float()
