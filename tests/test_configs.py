"""Every YAML under conf/ composes, validates and instantiates: one test id per file."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedbench import schema
from fedbench.configs import compressor_names, config_dir

CONF = config_dir()
YAMLS = sorted(p.relative_to(CONF) for p in CONF.rglob("*.yaml"))


def _compose(overrides: list[str], *, hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=hydra_cfg)


def _resolved(cfg) -> dict:
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg.pop("hydra", None)
    return cfg


def test_conf_has_every_group() -> None:
    groups = {p.parts[0] for p in YAMLS if len(p.parts) > 1}
    assert {"compressor", "dataset", "partition", "model", "network", "experiment"} <= groups


@pytest.mark.parametrize("rel", YAMLS, ids=[str(p) for p in YAMLS])
def test_yaml_composes(rel: Path, tmp_path: Path) -> None:
    group, name = str(rel.parent), rel.stem
    if group == ".":
        cfg = _compose([])
        schema.validate(_resolved(cfg), compressors=compressor_names())
        return
    if group == "experiment":
        cfg = _compose([f"+experiment={name}"], hydra_cfg=True)
        params = cfg.hydra.sweeper.params
        assert params, f"experiment {name} sweeps nothing"
        header = (CONF / rel).read_text()
        assert f"+experiment={name}" in header, "preset must name its launch command"
        return
    if group.startswith("hydra"):
        cfg = _compose([f"{group}={name}"], hydra_cfg=True)
        assert cfg.hydra.launcher._target_.startswith("hydra_plugins.")
        return
    if group == "local_sgd":
        cfg = _resolved(_compose([f"+local_sgd={name}"]))
        assert cfg["local_steps"] * cfg["rounds"] == 600
        return
    overrides = [f"{group}={name}"]
    if group == "partition" and name == "natural":
        overrides.append("dataset=synthetic")  # the natural split belongs to synthetic
    if group == "dataset" and name == "npz":
        npz = tmp_path / "d.npz"
        npz.write_bytes(b"")
        overrides.append(f"dataset.path={npz}")
    cfg = _resolved(_compose(overrides))
    schema.validate(cfg, compressors=compressor_names())
    if group == "compressor":
        import torch

        from fedbench.compress import from_config

        codec = from_config(cfg["compressor"])
        x = torch.randn(16, 24, generator=torch.Generator().manual_seed(0))
        state = codec.init_state(x.shape)
        msg = codec.encode(x, torch.Generator().manual_seed(1), state)
        assert codec.decode(msg).shape == x.shape
    elif group != "dataset" or name != "npz":
        from fedbench.sim.engine import validate

        validate(cfg)
