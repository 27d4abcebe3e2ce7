"""Update compressors: tensor -> bytes -> tensor. Knows nothing of FL, Hydra or files
beyond the compressor defaults in ``conf/compressor/``.

``build(name, **params)`` makes a compressor from ``conf/compressor/<name>.yaml`` (its
defaults) with ``params`` on top; ``from_config(cfg)`` does the same from an already
composed mapping (what Hydra gives the app). Both wrap the codec in
:class:`ErrorFeedback` when ``error_feedback`` is true.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from fedbench.compress.base import Compressor, EFState, ErrorFeedback
from fedbench.configs import compressor_names, config_dir

__all__ = [
    "Compressor",
    "EFState",
    "ErrorFeedback",
    "available",
    "build",
    "from_config",
    "load_config",
]

# Keys of a compressor YAML that are not constructor arguments.
_META_KEYS = {"_target_", "error_feedback", "defaults"}


def available() -> list[str]:
    """Names accepted by :func:`build` (files under ``conf/compressor/``)."""
    return compressor_names()


def load_config(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    from omegaconf import OmegaConf

    path = config_dir() / "compressor" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown compressor {name!r}; available: {', '.join(available())}")
    if name in seen:
        raise ValueError(f"compressor config {name!r} includes itself via defaults")
    own = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    merged: dict[str, Any] = {}
    # A named variant (quant4.yaml) lists its base in a Hydra defaults list.
    for base in own.pop("defaults", []) or []:
        if base == "_self_":
            continue
        merged.update(load_config(str(base), (*seen, name)))
    merged.update(own)
    return merged


def build(name: str, **params: Any) -> Compressor:
    """The compressor ``conf/compressor/<name>.yaml`` describes, with ``params`` on top."""
    cfg = load_config(name)
    unknown = set(params) - set(cfg) - {"error_feedback"}
    if unknown:
        allowed = [*sorted(set(cfg) - _META_KEYS), "error_feedback"]
        raise ValueError(
            f"compressor {name!r} has no parameter(s) {sorted(unknown)}; allowed: {allowed}"
        )
    cfg.update(params)
    return from_config(cfg)


def from_config(cfg: Mapping[str, Any]) -> Compressor:
    """Instantiate a composed compressor config (``_target_`` plus constructor keywords)."""
    cfg = dict(cfg)
    target = cfg.get("_target_")
    if not isinstance(target, str) or "." not in target:
        raise ValueError(f"compressor config needs a '_target_' class path, got {target!r}")
    module_name, _, cls_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"compressor _target_ {target!r} cannot be imported: {e}") from None
    kwargs = {k: v for k, v in cfg.items() if k not in _META_KEYS}
    sig = inspect.signature(cls)
    unknown = set(kwargs) - set(sig.parameters)
    if unknown:
        raise ValueError(
            f"compressor {cls.__name__} has no parameter(s) {sorted(unknown)}; "
            f"allowed: {sorted(sig.parameters)} and error_feedback"
        )
    if cfg.get("error_feedback", False) and getattr(cls, "keeps_residual", False):
        raise ValueError(
            f"compressor.error_feedback=true is invalid for {cls.__name__}: it keeps its own "
            "residual, so error feedback would apply twice; set compressor.error_feedback=false"
        )
    codec = cls(**kwargs)
    if cfg.get("error_feedback", False):
        codec = ErrorFeedback(codec)
    return codec
