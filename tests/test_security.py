"""A checkpoint is data: no loader calls, imports or unpickles anything a file names (issue 10, item 1).

Each hostile file below would, if its contents were obeyed, truncate a victim file, unpickle a payload that creates
a marker file, or spawn a process that creates one. Every loader must refuse it with an error naming the key and
value, and afterwards the victim is intact and no marker exists.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scoresde.checkpoint import CheckpointError
from scoresde.loading import load_model
from tests.test_train_cli import TOY, compose_cfg

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates ``marker`` (what ``torch.load(weights_only=False)`` of a downloaded file would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from scoresde.training import train

    run = tmp_path_factory.mktemp("sec") / "run"
    train(compose_cfg(*TOY, "trainer.steps=2", "trainer.ckpt_every=2", "trainer.export=true"), run)
    return run


@pytest.fixture
def traps(tmp_path):
    """A victim file, a pickle payload and the marker path that any obeyed instruction would create."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save(_Payload(marker), evil)
    assert not marker.exists()
    return victim, marker, evil


def hostile_configs(victim: Path, marker: Path, evil: Path) -> dict[str, tuple[str, str]]:
    """name -> (YAML lines replacing the stored config's node, text the error must contain)."""
    return {
        "open": (f"sde: {{_target_: builtins.open, file: '{victim}', mode: w}}", "builtins.open"),
        "torch.load": (f"sde: {{_target_: torch.load, f: '{evil}', weights_only: false}}", "torch.load"),
        "popen": (f"model: {{net: {{_target_: subprocess.Popen, args: [touch, '{marker}']}}}}", "subprocess.Popen"),
        "exec": (
            "optim: {scheduler: {_target_: torch.optim.lr_scheduler.LambdaLR, _partial_: true, lr_lambda: "
            f'{{_target_: builtins.exec, source: \'open("{marker}", "w")\'}}}}}}',
            "builtins.exec",
        ),  # fmt: skip
        "args": (f"sde: {{_target_: scoresde.sde.VPSDE, _args_: ['{victim}']}}", "_args_"),
        "interpolation": ("trainer: {device: '${oc.env:HOME}'}", "interpolation"),
        "yaml-tag": (f"seed: !!python/object/apply:os.system ['touch {marker}']", "YAML"),
    }


def with_stored(text: str, replacement: str) -> str:
    """The stored YAML with one top-level node merged from ``replacement``."""
    from omegaconf import OmegaConf

    if "!!python" in replacement:  # not YAML OmegaConf can merge: append it raw
        return text + "\n" + replacement + "\n"
    base = OmegaConf.create(text)
    return OmegaConf.to_yaml(OmegaConf.merge(base, OmegaConf.create(replacement)), resolve=False)


def hostile_checkpoint(run: Path, out: Path, replacement: str) -> Path:
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["config"] = with_stored(state["config"], replacement)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out


def hostile_export(run: Path, out: Path, replacement: str) -> Path:
    from safetensors.torch import load_file, save_file

    from scoresde.checkpoint import load_safetensors

    _, meta = load_safetensors(run / "ema.safetensors")
    meta["config"] = with_stored(meta["config"], replacement)
    save_file(load_file(run / "ema.safetensors"), str(out), metadata=meta)
    return out


@pytest.mark.parametrize("fmt", ["checkpoint", "export"])
@pytest.mark.parametrize("name", ["open", "torch.load", "popen", "exec", "args", "interpolation", "yaml-tag"])
def test_stored_config_names_nothing_that_runs(run, traps, tmp_path, fmt, name):
    victim, marker, evil = traps
    replacement, message = hostile_configs(victim, marker, evil)[name]
    make = hostile_checkpoint if fmt == "checkpoint" else hostile_export
    path = make(run, tmp_path / ("last.pt" if fmt == "checkpoint" else "ema.safetensors"), replacement)
    with pytest.raises(CheckpointError, match=message) as err:
        load_model(path)
    assert str(path) in str(err.value)
    assert victim.read_text() == "precious" and not marker.exists()


def test_a_legitimate_checkpoint_still_loads(run):
    m = load_model(run)
    assert m.data_shape == (2,) and type(m.sde).__name__ == "VPSDE"


def test_sample_and_likelihood_scripts_refuse_hostile_files(run, traps, tmp_path):
    """The command lines end with one line naming the key, exit code 1, nothing created or truncated."""
    victim, marker, evil = traps
    bad = hostile_checkpoint(run, tmp_path / "bad" / "last.pt", hostile_configs(victim, marker, evil)["open"][0])
    for script, extra in (("sample.py", ["n=2"]), ("likelihood.py", ["n=2"])):
        proc = subprocess.run([sys.executable, str(ROOT / script), f"ckpt={bad}", f"out={tmp_path / 'o'}",
                               f"hydra.run.dir={tmp_path / 'h'}", *extra], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 1, proc.stderr[-2000:]
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[scoresde] error:")]
        assert len(lines) == 1 and "sde._target_='builtins.open'" in lines[0] and "Traceback" not in proc.stderr
    assert victim.read_text() == "precious" and not marker.exists()


def test_resume_never_builds_the_stored_config(run, traps, tmp_path):
    """Auto-resume compares the stored settings with the new ones (refused: they differ) and builds nothing; a
    hostile checkpoint given as trainer.resume= contributes only tensors."""
    import shutil

    from scoresde.schema import ConfigError
    from scoresde.training import train

    victim, marker, evil = traps
    own = tmp_path / "own"
    shutil.copytree(run, own)
    hostile_checkpoint(run, own / "checkpoints" / "last.pt", hostile_configs(victim, marker, evil)["torch.load"][0])
    with pytest.raises(ConfigError, match="sde._target_"):
        train(compose_cfg(*TOY, "trainer.steps=4", "trainer.ckpt_every=2"), own)
    other = hostile_checkpoint(run, tmp_path / "other" / "last.pt", hostile_configs(victim, marker, evil)["popen"][0])
    res = train(compose_cfg(*TOY, "trainer.steps=4", "trainer.ckpt_every=2", f"trainer.resume={other}"),
                tmp_path / "new")  # fmt: skip
    assert res.step == 4
    assert victim.read_text() == "precious" and not marker.exists()


def test_classifier_metadata_is_data(tmp_path, traps):
    from safetensors.torch import save_file

    from scoresde.classifier import load_classifier, save_classifier
    from scoresde.nets import MLP
    from scoresde.sde import VPSDE

    victim, marker, _ = traps
    good = save_classifier(MLP((4,), hidden=8, depth=1, out_dim=3), tmp_path / "c.safetensors", VPSDE(), True)
    tensors, meta = _read(good)
    for key, value in (("hidden", f"__import__('os').system('touch {marker}')"), ("depth", "-1"),
                       ("data_shape", '{"_target_": "builtins.open"}'), ("centered", "os.system")):  # fmt: skip
        bad = tmp_path / f"bad_{key}.safetensors"
        save_file(tensors, str(bad), metadata={**meta, key: value})
        with pytest.raises(ValueError, match=key):
            load_classifier(bad)
    assert victim.read_text() == "precious" and not marker.exists()


def _read(path):
    from scoresde.checkpoint import load_safetensors

    return load_safetensors(path)


def test_reference_config_json_values_are_checked(tmp_path, traps):
    """A reference checkpoint's config.json is read by name; a value of the wrong type is named, never used."""
    from scoresde.nets.official import OFFICIAL_CONFIGS, resolve_config

    victim, marker, _ = traps
    cfg = json.loads(json.dumps(OFFICIAL_CONFIGS["vp/cifar10_ddpmpp_continuous"]))
    for section, key, value in (("model", "nf", {"_target_": "builtins.open", "file": str(victim), "mode": "w"}),
                                ("training", "sde", ["os.system", f"touch {marker}"]),
                                ("data", "image_size", "32; rm -rf /")):  # fmt: skip
        bad = json.loads(json.dumps(cfg))
        bad[section][key] = value
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=f"{section}.{key}"):
            resolve_config(path)
    assert victim.read_text() == "precious" and not marker.exists()
