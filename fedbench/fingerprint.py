"""What decides a cell's numbers besides its config: code, data files, user code, device.

A cell's identity in the results store (:func:`fedbench.store.config_hash`) is its
resolved config plus :func:`fingerprint`, so a finished cell is reused only while
everything that decides its result is unchanged:

- ``fedbench_version`` and ``source_sha``: the package version and a hash of every
  ``.py`` file of the ``fedbench`` package and every shipped config YAML. Fixing a bug in
  fedbench recomputes every cell (correct, if expensive: a bug fix may change any number).
- ``data_sha``: ``{value: sha256}`` of the content of every file named by a config value
  under ``dataset`` (e.g. ``dataset.path`` of an npz): regenerating a file at the same
  path recomputes.
- ``user_modules``: ``{module: sha256}`` of the source file of every module outside
  fedbench named by a ``_target_`` anywhere in the config (your own model or codec).
  The module is located with import machinery *without* executing it.
- ``device_kind``: ``cpu`` or ``cuda`` (the part of ``device`` before ``:``). Always part
  of the identity: CUDA and CPU random streams differ, and so do matmul numerics, so a
  GPU run is never reused for a CPU run or the other way round. The GPU index is not
  (``cuda:0`` and ``cuda:1`` are the same cell).

Everything is torch-free and cached per process (files by path, size and mtime), so a
cell pays a few milliseconds (the app computes the key before torch is imported).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import fedbench
from fedbench.configs import config_dir

_CHUNK = 1 << 20


def _sha_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=1024)
def _cached_sha(path: str, size: int, mtime_ns: int) -> str:
    return _sha_of_file(Path(path))


def file_sha(path: str | Path) -> str:
    """sha256 of a file's content, cached by (real path, size, mtime_ns)."""
    real = os.path.realpath(os.path.expanduser(path))
    st = os.stat(real)
    return _cached_sha(real, st.st_size, st.st_mtime_ns)


@functools.cache
def source_sha() -> str:
    """Hash of fedbench's own code and shipped configs (computed once per process)."""
    h = hashlib.sha256()
    roots = [("fedbench", Path(fedbench.__file__).resolve().parent, "*.py")]
    roots.append(("conf", config_dir().resolve(), "*.yaml"))
    for label, root, pattern in roots:
        for path in sorted(root.rglob(pattern)):
            if "__pycache__" in path.parts:
                continue
            h.update(f"{label}/{path.relative_to(root).as_posix()}\0".encode())
            h.update(path.read_bytes())
            h.update(b"\0")
    return h.hexdigest()[:16]


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _strings(v)


def _targets(obj: Any) -> Iterator[str]:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if k == "_target_" and isinstance(v, str):
                yield v
            else:
                yield from _targets(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _targets(v)


def data_shas(cfg: Mapping[str, Any]) -> dict[str, str]:
    """``{value: sha256}`` for every config value under ``dataset`` that names a file."""
    out: dict[str, str] = {}
    for value in _strings(cfg.get("dataset") or {}):
        if len(value) > 4096 or "\0" in value:
            continue
        try:
            if os.path.isfile(os.path.expanduser(value)):
                out[value] = file_sha(value)
        except OSError:  # unreadable: the run itself will say so
            continue
    return out


def _module_file(name: str) -> str | None:
    """The source file of module ``name``, found without executing it (or its parents)."""
    module = sys.modules.get(name)
    origin = getattr(getattr(module, "__spec__", None), "origin", None)
    if origin:
        return origin
    spec = None
    search: list[str] | None = None
    for part in name.split("."):
        spec = importlib.machinery.PathFinder.find_spec(part, search)
        if spec is None:
            return None
        search = list(spec.submodule_search_locations or [])
    return spec.origin if spec is not None else None


def _module_sha(target: str) -> tuple[str, str | None]:
    """The longest importable module prefix of a dotted ``_target_`` and its source sha."""
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:i])
        try:
            origin = _module_file(name)
        except (ImportError, ValueError, OSError):
            origin = None
        if origin and os.path.isfile(origin):
            return name, file_sha(origin)
    return ".".join(parts[:-1]) or target, None  # not found: building it will fail loudly


def user_module_shas(cfg: Mapping[str, Any]) -> dict[str, str | None]:
    """``{module: sha256}`` of every non-fedbench module named by a ``_target_``."""
    out: dict[str, str | None] = {}
    for target in _targets(cfg):
        if target == "fedbench" or target.startswith("fedbench."):
            continue
        module, sha = _module_sha(target)
        out[module] = sha
    return out


def device_kind(cfg: Mapping[str, Any]) -> str:
    """``cpu`` | ``cuda`` | ...: the device type of ``cfg['device']``, without its index."""
    return str(cfg.get("device") or "cpu").split(":", 1)[0].strip().lower() or "cpu"


def fingerprint(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What, besides the config, decides the numbers of the cell ``cfg`` (see module doc)."""
    return {
        "fedbench_version": fedbench.__version__,
        "source_sha": source_sha(),
        "data_sha": data_shas(cfg),
        "user_modules": user_module_shas(cfg),
        "device_kind": device_kind(cfg),
    }
