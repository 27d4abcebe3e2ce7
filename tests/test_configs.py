"""Every YAML under conf/ composes, validates and instantiates: one test id per file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
    if name == "custom":  # the user's own class: refused, one line, until it is named
        cfg = _resolved(_compose(overrides))
        with pytest.raises(ValueError, match=rf"{group}._target_ is missing: {group}=custom"):
            schema.validate(cfg, compressors=compressor_names())
            from fedbench.sim import models  # the model is checked once torch is there

            models.build(cfg["model"], 64, 10)
        return
    if group == "partition" and name == "natural":
        overrides.append("dataset=synthetic")  # data with clients of their own
    if group == "dataset":
        overrides += _data_fixture(name, tmp_path)
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
    elif (group, name) != ("dataset", "shakespeare"):  # LEAF-faithful: 2.5 GB, not loaded here
        from fedbench.sim.engine import validate

        validate(cfg)


def _data_fixture(name: str, tmp_path: Path) -> list[str]:
    """Overrides (and files in the data set's own format) that make ``dataset=name`` run."""
    import json
    import pickle

    if name == "npz":
        npz = tmp_path / "d.npz"
        y = np.arange(12) % 3
        np.savez(npz, X_train=np.ones((12, 2)), y_train=y, X_test=np.ones((6, 2)), y_test=y[:6])
        return [f"dataset.path={npz}"]
    if name == "femnist":
        for split, n in (("train", 8), ("test", 2)):
            (tmp_path / split).mkdir()
            users = {
                "w0": {"x": [[0.5] * 784] * n, "y": list(range(n))},
                "w1": {"x": [[0.1] * 784] * n, "y": [1] * n},
            }
            blob = {"users": list(users), "num_samples": [n, n], "user_data": users}
            (tmp_path / split / "d.json").write_text(json.dumps(blob))
        return [
            f"dataset.path={tmp_path}",
            "partition=natural",
            "num_clients=2",
            "clients_per_round=2",
        ]
    if name.startswith("cifar"):
        key = b"labels" if name == "cifar10" else b"fine_labels"
        files = (
            [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
            if name == "cifar10"
            else ["train", "test"]
        )
        for f in files:
            batch = {
                b"data": np.full((12, 3072), 7, np.uint8),
                key: [i % 10 for i in range(12)],
                b"coarse_labels": [0] * 12,
            }
            (tmp_path / f).write_bytes(pickle.dumps(batch, protocol=2))
        return [f"dataset.path={tmp_path}"]
    if name == "shakespeare_small":
        return ["partition=natural", "num_clients=100", "model=char_lstm"]
    return []


DATA_YAMLS = sorted(
    p.relative_to(CONF)
    for g in ("dataset", "partition")
    for p in (CONF / g).rglob("*.yaml")
    if p.stem != "custom"  # the user's class: test_custom_choices_need_a_target
)


@pytest.mark.parametrize("rel", DATA_YAMLS, ids=[str(p) for p in DATA_YAMLS])
def test_unknown_keys_of_every_dataset_and_partition_are_refused(rel: Path) -> None:
    """Each data set and partition YAML names a class (its `_target_`) that refuses a key
    it does not take, naming the key and the allowed ones, before any work."""
    from fedbench.sim import datasets, partition

    group = rel.parent.name
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / rel), resolve=True)
    assert "_target_" in cfg and "name" in cfg, "a YAML names its class and its report label"
    build = datasets.build if group == "dataset" else partition.build
    with pytest.raises(
        ValueError,
        match=rf"^{group}.bogus_key=1 is invalid: \w+ takes no such key; allowed keys: _target_, name",
    ):
        build(dict(cfg, bogus_key=1))
    if "path" not in cfg:  # every default value passes the class's own rules
        build(cfg)


PRESETS = sorted(p.stem for p in (CONF / "experiment").rglob("*.yaml"))


def _sweep_cells(name: str) -> list[list[str]]:
    """The override lists of every cell an experiment preset sweeps."""
    import itertools

    params = _compose([f"+experiment={name}"], hydra_cfg=True).hydra.sweeper.params
    keys = list(params)
    values = [str(params[k]).split(",") for k in keys]
    return [
        [f"+experiment={name}", *(f"{k}={v}" for k, v in zip(keys, combo, strict=True))]
        for combo in itertools.product(*values)
    ]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_cell_passes_the_memory_check(name: str) -> None:
    """The memory estimate must stay well below what a normal run needs: no cell of any
    preset (nor the defaults) may be refused, even on a machine with 2 GB to spare."""
    from fedbench.sim import data, memory, models, partition

    loaded: dict[str, tuple] = {}
    for overrides in [[], *_sweep_cells(name)]:
        cfg = _resolved(_compose(overrides))
        schema.validate(cfg, compressors=compressor_names())
        key = repr((cfg["dataset"], cfg["partition"], cfg["seed"], cfg["num_clients"]))
        if key not in loaded:
            ds = data.load(cfg["dataset"], cfg["seed"], cfg["num_clients"])
            parts = partition.partition(ds, cfg["num_clients"], cfg["partition"], cfg["seed"])
            loaded[key] = ds, [len(p) for p in parts]
        ds, sizes = loaded[key]
        spec = models.build(
            cfg["model"], ds.X_train.shape[1], ds.num_classes, ds.image_shape,
            vocab_size=ds.vocab_size, seq_len=ds.seq_len,
        )  # fmt: skip
        need = sum(memory.estimate_bytes(cfg, ds, spec.num_params, client_sizes=sizes).values())
        assert need < 2e9, (overrides, need)
        memory.check(dict(cfg, max_memory_gb=2), ds, spec.num_params, client_sizes=sizes)
        memory.check(cfg, ds, spec.num_params, client_sizes=sizes)


OBJECT_YAMLS = sorted(
    p.relative_to(CONF)
    for g in ("model", "network", "compressor")
    for p in (CONF / g).rglob("*.yaml")
    if p.stem != "custom"
)


@pytest.mark.parametrize("rel", OBJECT_YAMLS, ids=[str(p) for p in OBJECT_YAMLS])
def test_unknown_keys_of_every_model_network_and_compressor_are_refused(rel: Path) -> None:
    """Every group that builds an object refuses a key its class does not take, in one
    line naming the key, before any work (the data groups: the test above)."""
    group = rel.parent.name
    cfg = _resolved(_compose([f"{group}={rel.stem}"]))[group]
    bad = dict(cfg, bogus_key=1)
    if group == "model":
        from fedbench.sim import models

        build = lambda c: models.build(c, 64, 10, (1, 8, 8))  # noqa: E731
    elif group == "network":
        from fedbench.sim import network

        build = network.validate
    else:
        from fedbench.compress import from_config as build
    with pytest.raises(ValueError, match="bogus_key") as e:
        build(bad)
    assert "\n" not in str(e.value)
