"""``_target_``: how every config group names the class it builds, fedbench's or a user's.

:func:`locate` imports a dotted path and checks, before anything is called, that it names
a class of the expected kind (a ``Compressor``, an ``nn.Module``, a scheduler, ...);
:func:`keywords` checks a config's keys against the class's constructor. Both raise a
one-line ValueError naming the key, the value and what is allowed. Torch-free.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def locate(key: str, target: Any, kind: str, accept: Callable[[Any], bool] | type) -> type:
    """The class ``target`` (``pkg.module.Class``) names, if ``accept`` (a base class, or
    a predicate on the class) takes it; ``key`` (``model._target_``) names it in errors."""
    if target == "???":  # the `custom` choice of a group, its class not given
        group = key.rsplit(".", 1)[0]
        raise ValueError(f"{key} is missing: {group}=custom needs {key}=pkg.Class")
    if not isinstance(target, str) or "." not in target.strip("."):
        raise ValueError(f"{key}={target!r} is invalid: must be a dotted path pkg.Class")
    parts = target.split(".")
    obj: Any = None
    for i in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for p in parts[i:]:
                obj = getattr(obj, p)
        except AttributeError:
            obj = None
        break
    if obj is None:
        mod, _, attr = target.rpartition(".")
        raise ValueError(f"{key}={target!r} is invalid: cannot import {attr} from {mod}")
    ok = inspect.isclass(obj) and (
        issubclass(obj, accept) if isinstance(accept, type) else bool(accept(obj))
    )
    if not ok:
        got = (
            f"type {obj.__module__}.{obj.__qualname__}"
            if inspect.isclass(obj)
            else type(obj).__name__
        )
        raise ValueError(f"{key}={target!r} is invalid: must name {kind}, got {got}")
    return obj


def keywords(
    group: str, cls: type, cfg: Mapping[str, Any], *, provided: Iterable[str] = ()
) -> None:
    """Refuse a key of ``cfg`` that ``cls``'s constructor does not take (``provided``:
    arguments the caller passes itself, which the config may not set)."""
    params = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    provided = set(provided)
    allowed = sorted(n for n in params if n not in provided and n != "self")
    for k in cfg:
        if k in provided:
            raise ValueError(f"{group}.{k}={cfg[k]!r} is invalid: fedbench sets {k} itself")
        if k not in params:
            raise ValueError(
                f"{group}.{k} is not a parameter of {cls.__module__}.{cls.__qualname__}; "
                f"allowed: {', '.join(allowed) or 'none'}"
            )
