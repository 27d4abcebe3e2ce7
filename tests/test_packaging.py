"""Every config group ships in the wheel: pyproject.toml lists each folder under conf/."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_folder_is_a_listed_package_with_its_yaml():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        "fedbench." + ".".join(("conf", *p.relative_to(ROOT / "conf").parts))
        for p in [ROOT / "conf", *(ROOT / "conf").rglob("*")]
        if p.is_dir() and p.name != "__pycache__"
    }
    missing = folders - set(setup["packages"])
    assert not missing, f"add to [tool.setuptools] packages: {sorted(missing)}"
    with_yaml = {
        "fedbench." + ".".join(("conf", *p.parent.relative_to(ROOT / "conf").parts))
        for p in (ROOT / "conf").rglob("*.yaml")
    }
    no_data = with_yaml - set(setup["package-data"])
    assert not no_data, f"add to [tool.setuptools.package-data]: {sorted(no_data)}"
