"""LEAF's FEMNIST from local files: handwritten characters (62 classes) by writer.

``dataset.path`` is the folder LEAF's ``data/femnist/preprocess.sh -t sample`` leaves in
``data/femnist/data``: ``train/*.json`` and ``test/*.json``, each an object with ``users``,
``num_samples`` and ``user_data: {user: {x: [[784 floats in 0..1]], y: [ids 0..61]}}``.
Each writer is a client with train and test samples of its own. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fedbench.sim.datasets import base
from fedbench.sim.datasets.base import Dataset, DataSource

PIXELS, CLASSES = 28 * 28, 62
WHAT = (
    "dataset=femnist needs LEAF's FEMNIST JSON files in dataset.path=DIR: DIR/train/*.json "
    "and DIR/test/*.json (LEAF: cd data/femnist && ./preprocess.sh -s niid --sf 1.0 -k 0 "
    "-t sample; then DIR is data/femnist/data); nothing is downloaded"
)


def _files(root: str, split: str) -> list[Path]:
    folder = Path(root).expanduser() / split
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise ValueError(f"dataset.path={root!r} is invalid: no {split}/*.json there; {WHAT}")
    return files


def read_split(root: str, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{user: (x (n, 784) float32, y (n,) int64)}`` of one split, in file order."""
    users: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for f in _files(root, split):
        try:
            blob: Any = json.loads(f.read_text())
            data = blob["user_data"]
            names = blob["users"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"dataset femnist {f}: not a LEAF JSON file ({type(e).__name__}: {e})"
            ) from None
        for user in names:
            where = f"dataset femnist {f}: user {user!r}"
            try:
                x, y = data[user]["x"], np.asarray(data[user]["y"])
            except (KeyError, TypeError) as e:
                raise ValueError(f"{where}: needs x and y ({type(e).__name__}: {e})") from None
            try:
                x = np.asarray(x, dtype=np.float32)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: x must be rows of {PIXELS} numbers") from None
            if x.ndim != 2 or x.shape[1] != PIXELS or len(x) != len(y) or len(y) == 0:
                raise ValueError(
                    f"{where}: x of shape {x.shape} and {len(y)} "
                    f"labels: must be (n, {PIXELS}) pixels and n labels, n >= 1"
                )
            if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= CLASSES:
                raise ValueError(f"{where}: labels must be integers 0..{CLASSES - 1}")
            if not np.isfinite(x).all():
                raise ValueError(f"{where}: x holds NaN or inf")
            if user in users:  # LEAF splits a writer over files only across train/test
                x, y = np.concatenate([users[user][0], x]), np.concatenate([users[user][1], y])
            users[user] = (x, y.astype(np.int64))
    return users


class FEMNIST(DataSource):
    """FEMNIST by writer: ``natural`` and ``client_test`` hold each writer's samples."""

    label = "femnist"

    def __init__(self, path: str | None = None, standardize: bool = False) -> None:
        self.path = base.path("path", path, WHAT)
        self.standardize = base.flag("standardize", standardize)

    def has_clients(self) -> bool:
        return True

    def check(self, *, num_clients: int, max_memory_gb: float | None = None) -> None:
        _files(self.path, "train")
        _files(self.path, "test")

    def load(self, seed: int, num_clients: int, *, max_memory_gb: float | None = None) -> Dataset:
        train, test = read_split(self.path, "train"), read_split(self.path, "test")
        writers = list(train)
        X_train, y_train, natural = _stack([train[u] for u in writers])
        empty = (np.empty((0, PIXELS), np.float32), np.empty(0, np.int64))
        X_test, y_test, client_test = _stack([test.get(u, empty) for u in writers])
        others = [test[u] for u in test if u not in train]  # held out, no client's own
        if others:
            X_o, y_o, _ = _stack(others)
            X_test, y_test = np.concatenate([X_test, X_o]), np.concatenate([y_test, y_o])
        if len(y_test) == 0:
            raise ValueError(f"dataset.path={self.path!r}: the test/*.json files hold no samples")
        X_train, X_test = base.features(X_train, X_test, self.standardize)
        return Dataset(
            self.label, X_train, y_train, X_test, y_test, CLASSES, (1, 28, 28), natural,
            client_test=client_test,
        )  # fmt: skip


def _stack(
    parts: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    sizes = np.cumsum([0, *(len(y) for _, y in parts)])
    X = np.concatenate([x for x, _ in parts]) if parts else np.empty((0, PIXELS), np.float32)
    y = np.concatenate([y for _, y in parts]) if parts else np.empty(0, np.int64)
    return X, y, [np.arange(sizes[k], sizes[k + 1]) for k in range(len(parts))]
