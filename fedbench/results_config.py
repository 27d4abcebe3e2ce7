"""A run's ``.hydra/config.yaml`` and ``.hydra/hydra.yaml``, read within bounds.

Shared by the report loader (:mod:`fedbench.results_load`) and the end-of-sweep step.
Re-exported by :mod:`fedbench.results`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedbench.results_files import CONFIG, HYDRA

# A run's config is a few KiB and a few hundred YAML nodes. The bounds stop a damaged or
# hostile file (a YAML "billion laughs" of aliases, 276 bytes, expands to ~10^9 nodes)
# from hanging the report or the end of a sweep.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000


def _children(node: Any) -> list[Any]:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: Any, limit: int) -> None:
    """Raise ValueError if the YAML node graph, aliases expanded, has over ``limit`` nodes.

    Counts in time linear in the composed (unexpanded) graph: each node's expanded size is
    memoised. A recursive alias is refused too.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            open_nodes.discard(nid)
            sizes[nid] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[nid] > limit:
                raise ValueError(f"aliases expand to over {limit} YAML nodes (an alias bomb?)")
            continue
        if nid in sizes:
            continue
        if nid in open_nodes:
            raise ValueError("recursive YAML alias")
        open_nodes.add(nid)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


class ConfigFileError(ValueError):
    """A config file that cannot be read within bounds (too big, bad YAML, alias bomb)."""


def load_config_file(path: Path, *, resolve: bool = True) -> dict:
    """A run's ``.hydra/config.yaml`` as nested dicts, within bounds on size and expansion.

    Raises :class:`ConfigFileError` (a ValueError, one line) on a file over
    :data:`MAX_CONFIG_BYTES`, one whose aliases expand past :data:`MAX_CONFIG_NODES`, or
    one that does not parse to a mapping; OSError when it cannot be read. Interpolations are resolved when ``resolve`` (OmegaConf errors
    propagate). Shared by the report loader and the end-of-sweep step.
    """
    import yaml
    from omegaconf import OmegaConf

    path = Path(path)
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigFileError(f"over {MAX_CONFIG_BYTES} bytes")
    text = data.decode("utf-8", errors="replace")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigFileError(f"not valid YAML: {' '.join(str(e).split())}") from None
    if root is None:
        raise ConfigFileError("empty")
    try:
        _check_expansion(root, MAX_CONFIG_NODES)
    except ValueError as e:
        raise ConfigFileError(str(e)) from None
    if not isinstance(root, yaml.MappingNode):
        raise ConfigFileError("not a YAML mapping")
    cfg = OmegaConf.create(text)  # the same text, parsed by OmegaConf's own loader
    return OmegaConf.to_container(cfg, resolve=resolve)


def read_config(run_dir: Path) -> tuple[dict, str | None]:
    """The run's resolved ``.hydra/config.yaml`` as nested dicts, and a problem or None."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}, f"missing config {path}"
    try:
        return load_config_file(path), None
    except (ConfigFileError, OSError) as e:
        return {}, f"unreadable config {path}: {e}"
    except Exception as e:  # any parse or resolve error: a damaged file must not stop the report
        try:
            return load_config_file(path, resolve=False), f"unresolved config {path}: {e}"
        except Exception:
            return {}, f"unreadable config {path}: {e}"


def read_compressor_choice(run_dir: Path) -> str | None:
    """The compressor variant chosen on the command line (``quant8``), from hydra.yaml."""
    path = Path(run_dir) / HYDRA
    if not path.is_file():
        return None
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        choice = doc["hydra"]["runtime"]["choices"]["compressor"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return str(choice) if choice is not None else None
