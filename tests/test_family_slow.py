"""End to end on MNIST-5k (slow): DiT through the trainer, latent diffusion (autoencoder + DiT on its latents) and
super-resolution, each trained briefly on one CPU thread; their samples must beat uniform noise by a wide margin on
the MNIST Fréchet distance (scoresde.mnist_metrics; 200 samples against the 500 held-out images).

"A wide margin" is a quarter of the noise level: with minutes of CPU training the samples are blurry digit-like
strokes, far from the real-vs-real floor but far from noise too (benchmarks/bench_family.py has the figures).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("mlxtend")

from scoresde.conditioning import conditioned  # noqa: E402
from scoresde.data import from_model_range, load_dataset, to_model_range  # noqa: E402
from scoresde.ema import EMA  # noqa: E402
from scoresde.losses import get_loss  # noqa: E402
from scoresde.mnist_metrics import frechet_mnist_distance  # noqa: E402
from scoresde.nets import DiT, NCSNpp, SuperResNet  # noqa: E402
from scoresde.nets.superres import downsample  # noqa: E402
from scoresde.sampling import get_sampler  # noqa: E402
from scoresde.score import ScoreModel  # noqa: E402
from scoresde.sde import VPSDE  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # `make test-heavy`: 10+ minutes each on 2 CPU cores
N = 200


@pytest.fixture(scope="module")
def noise_level(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCORESDE_CACHE", str(tmp_path_factory.mktemp("cache")))
        level = frechet_mnist_distance(torch.rand(N, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
        yield level


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


def train_steps(model: ScoreModel, batch_fn, steps: int, lr: float) -> ScoreModel:
    """DSM with Adam (100 warm-up steps), clipping and EMA 0.99; ``batch_fn(gen) -> (x, conditioning or None)``."""
    torch.manual_seed(0)
    loss_fn, ema = get_loss("dsm", model.sde), EMA(model, 0.99)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / 100, 1.0))
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, cond = batch_fn(gen)
        draws = loss_fn.draw(x.shape, gen, x.device, x.dtype)
        loss = loss_fn.per_example(model if cond is None else conditioned(model, **cond), x, draws).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(model)
    return ema.module.eval()


def pixels(x01: torch.Tensor, batch: int = 64):
    def fn(gen):
        return to_model_range(x01[torch.randint(0, len(x01), (batch,), generator=gen)], True), None

    return fn


def dpm(score_fn, shape) -> torch.Tensor:
    sampler = get_sampler("dpm_solver", steps=20)
    return sampler(VPSDE(), score_fn, (N, *shape), generator=torch.Generator().manual_seed(1)).samples


def test_dit_through_the_trainer(tmp_path, mnist, noise_level):
    """model=dit_mnist trained by scoresde.training.train on data=mnist, sampled from the exported EMA weights."""
    from scoresde.generate import generate
    from scoresde.loading import load_model
    from scoresde.training import train
    from tests.test_train_cli import compose_cfg

    overrides = ["data=mnist", "model=dit_mnist", "trainer.steps=600", "trainer.batch_size=64", "model.ema_rate=0.99",
                 "trainer.progress=false", "trainer.sample_n=0", "trainer.eval_every=0", "trainer.tensorboard=false",
                 "optim.optimizer.lr=1e-3", "trainer.num_threads=1"]  # fmt: skip
    train(compose_cfg(*overrides), tmp_path / "run")
    loaded = load_model(tmp_path / "run")
    res = generate(loaded.model, loaded.sde, loaded.data_shape, N, get_sampler("dpm_solver", steps=20), batch_size=N)
    fd = frechet_mnist_distance(loaded.to_unit(res.samples))
    assert fd < noise_level / 4, (fd, noise_level)


def test_latent_diffusion(mnist, noise_level):
    """Autoencoder (latents 4x7x7), DiT with 1x1 patches on the cached latents, decoded samples."""
    from scoresde.latent import encode_dataset, train_autoencoder

    ae = train_autoencoder(mnist.train, mnist.test, channels=(16, 32), steps=600, batch_size=64, lr=5e-3).model
    z = encode_dataset(ae, mnist).train
    net = DiT((4, 7, 7), patch_size=1, hidden_size=128, depth=4, num_heads=4)
    model = train_steps(ScoreModel(net, VPSDE(), time_scale=999.0), lambda g: (z[torch.randint(0, len(z), (64,),
                        generator=g)], None), 600, 1e-3)  # fmt: skip
    with torch.no_grad():
        images = ae.decode(dpm(model, (4, 7, 7))).clamp(0, 1)
    fd = frechet_mnist_distance(images)
    assert fd < noise_level / 4, (fd, noise_level)


def test_super_resolution_of_real_low_resolution_images(mnist, noise_level):
    """A 2x SuperResNet (U-Net inner net) trained with noise-conditioning augmentation, conditioned on real 14x14
    held-out images: its 28x28 samples must beat noise widely and stay close to the images they came from."""
    inner = NCSNpp((3, 28, 28), nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,), fir=False,
                   progressive_input="none", embedding_type="positional")  # fmt: skip
    net = SuperResNet(inner, 2, aug_max=0.3)
    hi = pixels(mnist.train)

    def batches(gen):
        x, _ = hi(gen)
        return x, net.training_conditioning(downsample(x, 2), gen)

    model = train_steps(ScoreModel(net, VPSDE(), time_scale=999.0), batches, 300, 2e-3)
    real = mnist.test[:N]
    low = to_model_range(downsample(real, 2), True)
    with torch.no_grad():
        x = from_model_range(dpm(conditioned(model, low_res=low, aug_level=0.0), (1, 28, 28)), True)
    fd = frechet_mnist_distance(x)
    assert fd < noise_level / 4, (fd, noise_level)
    # Conditioning is used: a sample is nearer its own low-resolution image than another's. Sign test over the N = 200
    # pairs: without conditioning P(own < other) = 1/2, so the fraction must exceed 1/2 by 3 standard errors
    # (3 * sqrt(1/4 / N) = 0.106).
    own = (downsample(x, 2) - downsample(real, 2)).square().flatten(1).mean(1)
    other = (downsample(x, 2) - downsample(real.roll(1, 0), 2)).square().flatten(1).mean(1)
    assert float((own < other).double().mean()) > 0.5 + 3 * (0.25 / N) ** 0.5
    assert float(own.mean()) < float(other.mean())
