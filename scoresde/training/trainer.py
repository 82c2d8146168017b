"""The training loop: denoising score matching with Adam, warm-up, clipping, EMA, held-out loss, sample grids and
checkpoints that survive (Song et al., ICLR 2021, App. D and H).

Determinism: every random draw of step ``k`` (data order aside, which :class:`DistributedSampler` fixes from
``(seed, epoch)``) comes from a generator seeded with ``(seed, k)``: dequantization noise, flips, loss times and
noise, all drawn for the *global* batch and split across ranks. So a run resumed from a checkpoint, or run on
``K`` processes, sees exactly the same numbers as one uninterrupted single process; the checkpoint still carries
the global RNG states (dropout) of torch, CUDA, numpy and python.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from scoresde import distributed
from scoresde.checkpoint import (
    CHECKPOINT_DIR,
    LAST,
    CheckpointError,
    atomic_save,
    export_safetensors,
    find_checkpoint,
    load_checkpoint,
    load_state_strict,
    rng_state,
    run_checkpoint,
    set_rng_state,
)
from scoresde.data import ArrayDataset, BatchTransform, from_model_range, load_dataset
from scoresde.ema import EMA
from scoresde.io import plot_metrics, truncate_jsonl
from scoresde.losses import DSMLoss, get_loss
from scoresde.rundir import RunDirInUse, RunDirLock
from scoresde.schema import ConfigError
from scoresde.score import ScoreModel
from scoresde.training.latent import latent_to_unit, prepare_latent_data
from scoresde.training.runlog import RunLog, StopRequest
from scoresde.training.sigma_data import fill_sigma_data
from scoresde.training.superres import SuperResTask, with_conditioning
from scoresde.utils import derived_seed

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Setup:
    """Objects a config describes, built by the caller (the Hydra wrapper instantiates ``_target_`` nodes)."""

    sde: Any
    make_net: Callable[[tuple[int, ...]], nn.Module]
    make_optimizer: Callable[[Any], torch.optim.Optimizer]
    make_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None
    config_yaml: str = ""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    checkpoint: Path | None
    samples: Path | None = None
    weights: Path | None = None
    eval_loss: float | None = None
    history: list[dict] = field(default_factory=list)
    stopped_by: int | None = None  # the signal (SIGTERM, SIGINT, SIGUSR1) that stopped the run early, if any

    @property
    def exit_code(self) -> int:
        """What a command line should exit with: 0 when finished, ``128 + signal`` when stopped early (143 for
        SIGTERM), so that ``train && sample`` does not go on with a half-trained model."""
        return 0 if self.stopped_by is None else 128 + int(self.stopped_by)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class DiskFullError(OSError):
    """No space left to write a checkpoint or export; the last good checkpoint is kept."""


def seed_everything(seed: int) -> None:
    """Seed the global RNGs a checkpoint records (torch CPU and CUDA, numpy, python), so that a resumed run and an
    uninterrupted one hold the same states."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The generator of every draw of one step (independent streams for each ``(seed, step)``)."""
    return torch.Generator(device=device).manual_seed(derived_seed(seed, step))


def keep_implementation(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict``: the step implementation (``fused`` / ``foreach``) is this run's, not the stored
    one's (loading overwrites the parameter groups), so a resumed run steps as a fresh one would, same update."""
    for group in optimizer.param_groups:
        for key in ("fused", "foreach"):
            if key in optimizer.defaults:
                group[key] = optimizer.defaults[key]


def build_score_model(cfg, setup: Setup, data_shape: tuple[int, ...]) -> ScoreModel:
    m = cfg.model
    opts = dict(sigma_data=m.sigma_data, centered=m.centered or len(data_shape) != 3, scale_by_sigma=m.scale_by_sigma)
    net = setup.make_net(tuple(data_shape))
    return ScoreModel(net, setup.sde, m.parameterization, m.time_input, m.time_scale, **opts)


def build_loss(cfg, sde) -> DSMLoss:
    c, sd = cfg.loss, cfg.model.sigma_data
    if c.name == "dsm":
        opts = dict(
            eps=c.eps, reduce_mean=c.reduce_mean, weighting=c.weighting, importance_sampling=c.importance_sampling
        )
        opts["sigma_data"] = sd
    elif c.name == "edm":
        opts = dict(eps=c.eps, reduce_mean=c.reduce_mean, sigma_data=sd, p_mean=c.p_mean, p_std=c.p_std)
    else:
        opts = dict(reduce_mean=c.reduce_mean)
    return replace(get_loss(c.name, sde, **opts), label_dropout=c.label_dropout)


class Trainer:
    """One training run in ``run_dir``; :meth:`run` trains to ``trainer.steps`` and returns a :class:`TrainResult`."""

    def __init__(self, cfg, setup: Setup, run_dir: str | Path):
        self.cfg, self.setup, self.tc = cfg, setup, cfg.trainer
        tc = self.tc
        if tc.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {sorted(PRECISIONS)}, got {tc.precision!r}")
        if tc.num_threads:
            torch.set_num_threads(int(tc.num_threads))
        self.dist = distributed.init_distributed(tc.device)
        self.device = self.dist.device
        self.run_dir = Path(distributed.broadcast_object(str(Path(run_dir).resolve()), self.dist))
        self.ckpt_dir = self.run_dir / CHECKPOINT_DIR
        self.is_main = self.dist.is_main
        self.lock = RunDirLock(self.run_dir)
        refused = None
        if self.is_main:  # one training per run directory; the other ranks share rank 0's
            try:
                self.lock.acquire()
            except RunDirInUse as err:
                refused = str(err)
        refused = distributed.broadcast_object(refused, self.dist)
        if refused:
            raise RunDirInUse(refused)
        try:
            self._build(cfg, setup)
        except BaseException:
            self.lock.release()
            raise

    def _build(self, cfg, setup: Setup) -> None:
        """Data, model, EMA, optimizer, loss and preview sampler; every setting checked before step 1."""
        from scoresde.training.build import build_preview_sampler

        tc = self.tc
        self.preview_sampler = build_preview_sampler(tc.sampler, setup.sde)
        world = self.dist.world_size
        if tc.batch_size % (world * tc.grad_accum):
            raise ValueError(
                f"trainer.batch_size={tc.batch_size} must be divisible by world_size * grad_accum = "
                f"{world} * {tc.grad_accum}"
            )
        self.local_batch = tc.batch_size // world

        d = cfg.data
        self.data: ArrayDataset = load_dataset(
            d.kind,
            name=d.name,
            path=d.path,
            key=d.key,
            image_size=d.image_size,
            channels=d.channels,
            n_train=d.n_train,
            n_test=d.n_test,
            test_fraction=d.test_fraction,
            seed=d.seed,
        )
        self.data, self.autoencoder = prepare_latent_data(cfg, setup, self.data)  # latent diffusion (issue 16)
        self.superres = SuperResTask.of(cfg, self.data.is_image)  # cascaded super-resolution (issue 16)
        self.transform = BatchTransform(
            self.data.is_image, cfg.model.centered, self.data.levels, d.dequantize, d.random_flip
        )
        fill_sigma_data(cfg, setup, self.data.train, self.transform.evaluation)  # EDM: sigma_data from the data
        seed_everything(cfg.seed)  # same initial weights on every rank; every global RNG reproducible
        self.model = build_score_model(cfg, setup, self.data.data_shape).to(self.device)
        if tc.channels_last and self.data.is_image:
            self.model = self.model.to(memory_format=torch.channels_last)
        ema_rate = cfg.model.ema_rate if cfg.model.ema_rate is not None else tc.ema_rate
        self.ema = EMA(self.model, ema_rate)
        self.optimizer = setup.make_optimizer(self.model.parameters())
        self.scheduler = setup.make_scheduler(self.optimizer) if setup.make_scheduler else None
        self._fit_schedule_length()
        self.amp_dtype = PRECISIONS[tc.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=tc.precision == "fp16")
        self.loss_fn = build_loss(cfg, setup.sde)
        self.num_classes = getattr(self.model.net, "num_classes", None)
        if self.num_classes is not None:
            labels = self.data.train_labels
            if labels is None:
                raise ValueError(f"model.net.num_classes needs a dataset with class labels (data=digits), not {d.kind}")
            if int(labels.max()) >= self.num_classes:
                raise ValueError(f"model.net.num_classes={self.num_classes} but the data has label {int(labels.max())}")
        self.step = 0
        self.resumed_from: str | None = None
        self.stored_config: str | None = None  # the config text of the checkpoint resumed from

        self.train_model = self._training_view()
        n = self.data.train.shape[0]
        self.sampler = DistributedSampler(
            range(n), num_replicas=world, rank=self.dist.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"trainer.batch_size={tc.batch_size} is larger than the training set ({n} examples)")
        self._epoch, self._order = -1, None

    # --- set-up ---------------------------------------------------------------------------------------------
    def _training_view(self) -> ScoreModel:
        """The model as the loss sees it: the same parameters, wrapped in DDP / torch.compile if asked."""
        net = self.model.net
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        if self.tc.compile:  # compile the DDP-wrapped module (PyTorch's recommended order)
            net = torch.compile(net)
        if net is self.model.net:
            return self.model
        return self.model.with_net(net)

    def resume_source(self) -> Path | None:
        """The run dir's own ``last.pt`` (auto-resume), else ``trainer.resume``."""
        own = run_checkpoint(self.run_dir)
        if own is not None:
            return own
        if self.tc.resume:
            return find_checkpoint(self.tc.resume)
        return None

    def _fit_schedule_length(self) -> None:
        """Schedules that run to the end of training (``WarmupCosine(total=None)``) learn ``trainer.steps``."""
        for fn in getattr(self.scheduler, "lr_lambdas", ()):
            fit = getattr(fn, "fit_run_length", None)
            if fit is not None:
                fit(self.tc.steps)

    def load(self, path: Path, own: bool = True) -> None:
        """The state of the checkpoint at ``path``. ``own``: the run directory's own (the same experiment, resumed
        as it was); otherwise a new run starting from another run's weights, which keeps their optimizer moments
        but takes this config's optimizer settings (learning rate, betas, ...) and schedule, at the loaded step."""
        state = load_checkpoint(path)
        src = state["path"]
        load_state_strict(self.model, state["model"], src, "model")
        load_state_strict(self.ema, state["ema"], src, "EMA model")
        configured = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            keep_implementation(self.optimizer)
            if own and self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"checkpoint {src!r}: optimizer/scheduler state does not fit: {err}") from err
        self._fit_schedule_length()  # the loaded state carries the stored run's length
        self.step = int(state["step"])
        if not own:
            for group, settings in zip(self.optimizer.param_groups, configured, strict=True):
                group.update(settings)
            self._advance_schedule(self.step)
        if "rng" in state:
            set_rng_state(state["rng"])
        self.resumed_from = src
        self.stored_config = state.get("config") or None

    def _advance_schedule(self, steps: int) -> None:
        """This config's schedule, fresh, stepped to ``steps`` (every allowlisted schedule is a function of the
        step count, so this is its value there)."""
        if self.scheduler is None:
            return
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(steps):
                self.scheduler.step()

    def check_resumable(self, path: Path) -> None:
        """Resuming the run directory's own checkpoint continues *that* experiment: settings outside
        :data:`~scoresde.training.config.RESUMABLE` must equal the stored ones, or nothing is touched."""
        from scoresde.training.build import parse_train_config
        from scoresde.training.config import RESUMABLE, changed_settings

        state = load_checkpoint(path)
        stored = state.get("config")
        if not stored:
            return
        try:
            before = parse_train_config(stored, f"the config stored in {str(path)!r}")
        except ConfigError as err:
            raise CheckpointError(f"cannot compare with the run's stored settings: {err}") from None
        changed = changed_settings(before, self.cfg)
        if changed:
            resumable = ", ".join(r.removeprefix("trainer.") for r in RESUMABLE)
            raise ConfigError(
                f"run directory {str(self.run_dir)!r} holds a run with other settings; resuming it may only change "
                f"trainer.{{{resumable}}}. Changed: " + "; ".join(changed) + ". Start a new run directory "
                "(hydra.run.dir=...) for new settings, optionally with trainer.resume=<this run> to start from its "
                "weights."
            )

    def state_dict(self) -> dict:
        return {
            "format": "scoresde-checkpoint-1",
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "step": self.step,
            "rng": rng_state(),
            "config": self.setup.config_yaml,
            "data_shape": list(self.data.data_shape),
            "world_size": self.dist.world_size,
        }

    # --- one step ---------------------------------------------------------------------------------------------
    def _labels(self, labels: torch.Tensor | None, index) -> torch.Tensor | None:
        """Class labels of a batch for a class-conditional model (``None`` for an unconditional one)."""
        if self.num_classes is None or labels is None:
            return None
        return labels[index].to(self.device)

    def _batch_indices(self, step: int) -> torch.Tensor:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._order = torch.tensor(list(iter(self.sampler)), dtype=torch.long)
            self._epoch = epoch
        return self._order[pos * self.local_batch : (pos + 1) * self.local_batch]

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, step: int) -> torch.Tensor:
        """One optimizer step; returns the (local, detached) batch loss."""
        world, rank = self.dist.world_size, self.dist.rank
        idx = self._batch_indices(step)
        x = self.data.train[idx].to(self.device)
        y = self._labels(self.data.train_labels, idx)
        shape = (self.tc.batch_size, *self.data.data_shape)
        gen = step_generator(self.cfg.seed, step, self.device)
        mine = slice(rank, None, world)  # DistributedSampler deals the global batch round-robin
        aug = self.transform.draw(shape, gen, self.device).select(mine)
        draws = self.loss_fn.draw(shape, gen, self.device, x.dtype).select(mine)
        x = self.transform.apply(x, aug)
        cond = self.superres.conditioning(x, shape, gen, mine) if self.superres else None
        if self.tc.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        accum = self.tc.grad_accum
        micro = self.local_batch // accum
        total = torch.zeros((), device=self.device)
        for k in range(accum):
            part = slice(k * micro, (k + 1) * micro)
            sync = k == accum - 1 or not self.dist.enabled
            ctx = contextlib.nullcontext() if sync else self.train_model.net.no_sync()
            with ctx:
                with self._autocast():
                    model = with_conditioning(self.train_model, cond, part)
                    per = self.loss_fn.per_example(model, x[part], draws.select(part), None if y is None else y[part])
                loss = per.sum() / self.local_batch
                self.scaler.scale(loss).backward()
            total = total + loss.detach()
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        self.ema.update(self.model)
        return total

    # --- evaluation -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def held_out_loss(self) -> float:
        """Mean loss of the EMA model on the test split, with the same fixed draws every time."""
        test = self.data.test[: self.tc.eval_examples].to(self.device)
        y = self._labels(self.data.test_labels, slice(0, self.tc.eval_examples))
        x = self.transform.evaluation(test)
        gen = torch.Generator(device=self.device).manual_seed(12345)
        draws = self.loss_fn.draw(x.shape, gen, self.device, x.dtype)
        cond = self.superres.conditioning(x, x.shape, gen) if self.superres else None
        total = 0.0
        for i in range(0, x.shape[0], self.local_batch):
            part = slice(i, i + self.local_batch)
            y_part = None if y is None else y[part]
            model = with_conditioning(self.ema.module, cond, part)
            total += float(self.loss_fn.per_example(model, x[part], draws.select(part), y_part).sum())
        return total / x.shape[0]

    @torch.no_grad()
    def sample(self, tag: str) -> Path:
        """``trainer.sample_n`` samples of the EMA model, seeded per sample by ``(seed, k)`` as ``sample.py seed=<the
        run's seed>`` would draw them, written by :func:`scoresde.generate.save_samples` as ``samples/<tag>.npz`` and
        ``.png`` (an image grid, or a scatter plot over the test data for 2-D points)."""
        from scoresde.generate import generate, save_samples

        model, n = self.ema.module, self.tc.sample_n
        if self.superres:  # super-resolution of the held-out images
            model = self.superres.preview(model, self.transform.evaluation(self.data.test[:n].to(self.device)), n)
        res = generate(model, self.setup.sde, self.data.data_shape, self.tc.sample_n, self.preview_sampler,
                       seed=self.cfg.seed, batch_size=self.tc.sample_n, device=self.device, progress=False)  # fmt: skip
        centered = self.cfg.model.centered
        to_unit = (lambda x: from_model_range(x, centered)) if self.data.is_image else None
        to_unit = latent_to_unit(self.autoencoder) if self.autoencoder is not None else to_unit  # decode latents
        paths = save_samples(self.run_dir / "samples", res, to_unit, reference=self.data.test, stem=tag)
        return paths.get("png", paths["npz"])

    # --- checkpoints ------------------------------------------------------------------------------------------
    def save(self) -> Path:
        state = self.state_dict()
        with disk_full_is_an_error(self.ckpt_dir):
            path = atomic_save(state, self.ckpt_dir / LAST)
            if self.tc.keep_every and self.step % self.tc.keep_every == 0:
                atomic_save(state, self.ckpt_dir / f"step_{self.step:08d}.pt")
        return path

    # --- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Resume if there is something to resume, train to ``trainer.steps`` (or until a stop signal), finish."""
        self._begin()
        tc = self.tc
        with StopRequest() as stop, RunLog(self.run_dir, self.is_main, tc.steps, self.step, self.device,
                                           tc.progress, tc.tensorboard) as log:  # fmt: skip
            self.model.train()
            while self.step < tc.steps:
                log.add(self.train_step(self.step))
                self.step += 1
                if self._after_step(log, stop):
                    break
        return self._finish(log, stop)

    def _begin(self) -> None:
        """Resume (the run's own checkpoint only with its own settings), then record the config in effect."""
        src = self.resume_source()
        if src is not None:
            own = src == run_checkpoint(self.run_dir)
            if own:
                self.check_resumable(src)
            self.load(src, own)
        if not self.is_main:
            return
        (self.run_dir / "config.yaml").write_text(self.setup.config_yaml)
        truncate_jsonl(self.run_dir / "metrics.jsonl", self.step)
        for stale in self.ckpt_dir.glob("*.tmp"):
            stale.unlink()
        msg = f"resumed from {self.resumed_from} at step {self.step}" if self.resumed_from else "starting"
        procs = f" x {self.dist.world_size} processes" if self.dist.enabled else ""
        params = sum(p.numel() for p in self.model.parameters())
        print(f"[scoresde] {msg}; run dir {self.run_dir}; data {self.data}; {params:,} parameters; device "
              f"{self.device}{procs}", flush=True)  # fmt: skip

    def _after_step(self, log: RunLog, stop: StopRequest) -> bool:
        """Log, evaluate, preview, checkpoint as the cadences say; ``True`` when a stop signal ends the run here."""
        tc, step = self.tc, self.step
        end = step == tc.steps
        log_now = step % tc.log_every == 0 or end
        stopping = not end and self._stop_requested(stop, log_now)
        eval_now = bool(tc.eval_every and step % tc.eval_every == 0) or end
        ckpt_now = step % tc.ckpt_every == 0 or end or stopping
        if log_now or eval_now or ckpt_now:
            self._check_finite(log)
        values = log.window_stats(self._sum_over_ranks) if log_now else {}
        if log_now and self.scheduler is not None:
            values["lr"] = self.optimizer.param_groups[0]["lr"]
        if eval_now and self.is_main:
            values["eval_loss"] = self.held_out_loss()
        if values:
            log.record(step, **values)
        if tc.sample_n > 0 and tc.sample_every and step % tc.sample_every == 0 and self.is_main and not end:
            self.sample(f"step_{step:08d}")
        if ckpt_now:
            if self.is_main:
                self.save()
            distributed.barrier(self.dist)
        if stopping and self.is_main:
            print(f"[scoresde] pre-empted ({stop.name}): checkpoint at step {step}, exiting with code "
                  f"{128 + int(stop.signum or 0)} (run again to resume)", flush=True)  # fmt: skip
        return stopping

    def _sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_sum(t, self.dist) / self.dist.world_size

    def _stop_requested(self, stop: StopRequest, log_now: bool) -> bool:
        """Whether a rank got SIGTERM / SIGINT / SIGUSR1: checked every step in one process, at log steps under DDP
        (where the flag is summed over the ranks, so that all stop at the same step)."""
        if not self.dist.enabled:
            return stop.signum is not None
        if not log_now:
            return False
        flag = torch.tensor(float(stop.signum is not None), device=self.device)
        return float(distributed.all_reduce_sum(flag, self.dist)) > 0

    def _check_finite(self, log: RunLog) -> None:
        bad = distributed.all_reduce_sum(log.nonfinite.float(), self.dist)
        if float(bad) > 0:
            last = self.ckpt_dir / LAST
            kept = f"the last good checkpoint {str(last)!r} is kept" if last.exists() else "no checkpoint was written"
            raise NonFiniteLossError(
                f"loss became NaN or infinite before step {self.step}; stopping ({kept}). "
                "Lower optim.optimizer.lr, enable optim.grad_clip or check the data."
            )

    def _finish(self, log: RunLog, stop: StopRequest) -> TrainResult:
        """After the last step: the final samples, the export, the metrics plot and a summary (rank 0)."""
        tc = self.tc
        result = TrainResult(self.run_dir, self.step, run_checkpoint(self.run_dir), eval_loss=log.eval_loss)
        result.history = log.history
        result.stopped_by = stop.signum if self.step < tc.steps else None
        if self.is_main and self.step >= tc.steps:
            if tc.sample_n > 0:
                result.samples = self.sample("final")
            if tc.export:
                with disk_full_is_an_error(self.run_dir):
                    result.weights = self.export(self.run_dir / "ema.safetensors")
            if (self.run_dir / "metrics.jsonl").exists():
                plot_metrics(self.run_dir / "metrics.jsonl", self.run_dir / "metrics.png")
            self._summary(result)
        distributed.barrier(self.dist)
        return result

    def export(self, path: Path) -> Path:
        """EMA weights of the network as safetensors; the config and data shape travel in the metadata."""
        meta = {
            "format": "scoresde-ema-1",
            "config": self.setup.config_yaml,
            "data_shape": json.dumps(list(self.data.data_shape)),
            "step": str(self.step),
        }
        return export_safetensors(self.ema.module, path, meta)

    def _summary(self, r: TrainResult) -> None:
        lines = [f"[scoresde] done: {r.step} steps in {self.run_dir}"]
        if r.eval_loss is not None and math.isfinite(r.eval_loss):
            lines.append(f"  held-out loss (EMA): {r.eval_loss:.4f}")
        for name, p in (("checkpoint", r.checkpoint), ("samples", r.samples), ("EMA weights", r.weights)):
            if p is not None:
                lines.append(f"  {name}: {p}")
        print("\n".join(lines), flush=True)


@contextlib.contextmanager
def disk_full_is_an_error(directory: Path):
    """Turn "no space left on device" while writing into ``directory`` into one clear :class:`DiskFullError`."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        name = errno.errorcode.get(err.errno, "ENOSPC")
        raise DiskFullError(
            err.errno,
            f"no space left on device ({name}) writing into {str(directory)!r}; the last good checkpoint "
            "is kept — free some space and run again to resume",
        ) from None


def fit(cfg, setup: Setup, run_dir: str | Path) -> TrainResult:
    """Train (or resume) a score model as ``cfg`` says, writing everything under ``run_dir``."""
    threads = torch.get_num_threads()
    trainer = None
    try:
        trainer = Trainer(cfg, setup, run_dir)
        return trainer.run()
    finally:
        torch.set_num_threads(threads)  # trainer.num_threads is for this run only
        if trainer is not None:
            trainer.lock.release()
            distributed.cleanup(trainer.dist)


def train(config, run_dir: str | Path) -> TrainResult:
    """Plain entry point: check ``config`` (a :class:`~scoresde.training.TrainConfig`, a mapping, a Hydra config
    or YAML text), build what it names (allowlisted classes only) and train in ``run_dir``."""
    from scoresde.training.build import build_setup, parse_train_config
    from scoresde.training.config import check_new_run_config

    cfg = parse_train_config(config)
    check_new_run_config(cfg)
    return fit(cfg, build_setup(cfg), run_dir)
