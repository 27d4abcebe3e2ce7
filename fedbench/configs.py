"""Where the shipped configs live; torch-free so validation can run before heavy imports."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    """The ``conf/`` folder: the checkout's in a source tree, else the installed package's.

    ``pyproject.toml`` maps ``conf/`` to the package ``fedbench.conf``, so a non-editable
    install carries the same files.
    """
    checkout = Path(__file__).resolve().parents[1] / "conf"
    if (checkout / "config.yaml").is_file():
        return checkout
    from importlib.resources import files

    return Path(str(files("fedbench.conf")))


def compressor_names() -> list[str]:
    """Every name ``compressor=NAME`` (and ``fedbench.compress.build``) accepts."""
    return sorted(p.stem for p in (config_dir() / "compressor").glob("*.yaml"))
