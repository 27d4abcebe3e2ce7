"""How a run names its codec: the group choice, unless ``_target_`` was overridden.

``compressor=none compressor._target_=my.Codec`` composes the ``none`` YAML with
another class on top; labelling that run ``none`` would put a user codec beside the
dense baseline. :func:`label` keeps the choice only while its class is the YAML's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def label(cfg_compressor: Mapping[str, Any], choice: str | None) -> str:
    """The name a run's codec is reported by.

    ``choice`` (the ``compressor=`` group option, e.g. ``quant8``) when the composed
    config's ``_target_`` is the one ``conf/compressor/<choice>.yaml`` names (through
    its defaults list); otherwise the class name of ``_target_`` (``my.pkg.Codec`` ->
    ``Codec``). A choice that fedbench cannot check (a user's YAML on
    ``hydra.searchpath``) is kept as it is, as is any choice when there is no target.
    """
    from fedbench.compress import load_config  # lazy: the package imports torch

    target = cfg_compressor.get("_target_") if isinstance(cfg_compressor, Mapping) else None
    if not isinstance(target, str) or not target:
        return choice or "unknown"
    if choice:
        try:
            if load_config(choice).get("_target_") == target:
                return choice
        except ValueError:  # not under conf/compressor: the user's own YAML names it
            return choice
    return target.rpartition(".")[2]


def innermost(codec: Any) -> Any:
    """The codec under every wrapper (error feedback, EF21, entropy coding): its ``name``
    is what a run's ``family`` records (``topk`` for ``ErrorFeedback(Entropy(TopK))``)."""
    seen = 0
    while hasattr(codec, "inner") and seen < 8:  # wrappers nest at most a few deep
        codec, seen = codec.inner, seen + 1
    return codec
