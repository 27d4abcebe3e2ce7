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
from typing import TYPE_CHECKING, Any

from fedbench.compress.label import innermost, label
from fedbench.configs import compressor_names, config_dir

if TYPE_CHECKING:
    from fedbench.compress.base import Compressor, EFState, ErrorFeedback

__all__ = [
    "Compressor",
    "EFState",
    "ErrorFeedback",
    "available",
    "build",
    "from_config",
    "innermost",
    "label",
    "load_config",
]

_LAZY = {"Compressor", "EFState", "ErrorFeedback"}


def __getattr__(attr: str) -> Any:
    """Import torch only when a codec is wanted: ``fedbench.compress.ids`` and
    :func:`label` are read by torch-free code (results, reports, config checks)."""
    if attr in _LAZY:
        from fedbench.compress import base

        return getattr(base, attr)
    if not attr.startswith("__"):  # submodules: ``compress.wire`` without an import
        try:
            return importlib.import_module(f"{__name__}.{attr}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{attr}":  # the submodule exists but needs a package
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


# Keys of a compressor YAML that are not constructor arguments.
_META_KEYS = {"_target_", "error_feedback", "entropy", "defaults"}


def available() -> list[str]:
    """Names accepted by :func:`build` (files under ``conf/compressor/``).

    A template whose ``_target_`` is left to the command line (``custom.yaml``:
    ``_target_: ???``) is a file but builds nothing by itself, so it is not listed.
    """
    return [n for n in compressor_names() if load_config(n).get("_target_") != "???"]


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
    unknown = set(params) - set(cfg) - {"error_feedback", "entropy"}
    if unknown:
        allowed = [*sorted(set(cfg) - _META_KEYS), "error_feedback", "entropy"]
        raise ValueError(
            f"compressor {name!r} has no parameter(s) {sorted(unknown)}; allowed: {allowed}"
        )
    cfg.update(params)
    return from_config(cfg)


def from_config(cfg: Mapping[str, Any]) -> Compressor:
    """Instantiate a composed compressor config (``_target_`` plus constructor keywords).

    Only a class that subclasses :class:`Compressor` is built: ``_target_`` comes from
    the command line and config files, and calling whatever it names (``os.system``)
    would run it. Anything else raises ValueError before it is called.
    """
    from fedbench import registry
    from fedbench.compress.base import Compressor, ErrorFeedback

    cfg = dict(cfg)
    cls = registry.locate(
        "compressor._target_", cfg.get("_target_"), "a fedbench.compress.Compressor subclass",
        Compressor,
    )  # fmt: skip
    kwargs = {k: v for k, v in cfg.items() if k not in _META_KEYS}
    sig = inspect.signature(cls)
    unknown = set(kwargs) - set(sig.parameters)
    if unknown:
        raise ValueError(
            f"compressor {cls.__name__} has no parameter(s) {sorted(unknown)}; "
            f"allowed: {sorted(sig.parameters)} and error_feedback"
        )
    ef = cfg.get("error_feedback", False)
    if ef not in (True, False, "ef21"):
        raise ValueError(
            f"compressor.error_feedback={ef!r} is invalid: must be true (the residual), "
            "ef21 (EF21) or false"
        )
    if ef and getattr(cls, "keeps_residual", False):
        raise ValueError(
            f"compressor.error_feedback={ef!r} is invalid for {cls.__name__}: it keeps its own "
            "residual, so error feedback would apply twice; set compressor.error_feedback=false"
        )
    codec = cls(**kwargs)
    if cfg.get("entropy") is not None:  # entropy-code the codec's bytes (inside EF)
        from fedbench.compress.entropy import Entropy

        codec = Entropy(codec, cfg["entropy"])
    if ef == "ef21":  # EF21: the client's g_i, the server's running mean of them
        from fedbench.compress.ef21 import EF21

        codec = EF21(codec)
    elif ef:
        codec = ErrorFeedback(codec)
    return codec
