"""A composed config as the app passes it: ``make_cfg("rounds=2", ...)`` -> plain dict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedbench.compress import config_dir

# Small enough for a test, big enough that dropout, partial batches and momentum matter.
SMALL = ["rounds=3", "num_clients=6", "clients_per_round=4", "local_epochs=2", "batch_size=16"]


@pytest.fixture
def make_cfg() -> Callable[..., dict[str, Any]]:
    def make(*overrides: str, small: bool = True) -> dict[str, Any]:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=[*(SMALL if small else []), *overrides])
        out = OmegaConf.to_container(cfg, resolve=True)
        out.pop("hydra", None)
        return out

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """These tiny models run faster on one thread (and steadier on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
