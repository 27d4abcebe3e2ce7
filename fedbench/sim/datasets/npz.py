"""The user's own arrays: ``dataset=npz dataset.path=FILE.npz``.

The file holds ``X_train y_train X_test y_test`` and, optionally, ``client_train`` (and
``client_test``): one client id per row, the data's own clients for
``partition=natural``. ``fedbench.schema.inspect_npz`` checks labels and headers
before torch is imported; here the features are read and checked for NaN/inf.
"""

from __future__ import annotations

import numpy as np

from fedbench import schema
from fedbench.sim.datasets import base
from fedbench.sim.datasets.base import Dataset, DataSource

CLIENT_ARRAYS = ("client_train", "client_test")


class Npz(DataSource):
    """Arrays from an npz; ``X`` of shape (samples, features), (samples, height, width)
    or (samples, 3 axes) images in ``layout``, or integer token ids when ``vocab_size``."""

    label = "npz"

    def __init__(
        self,
        path: str | None = None,
        layout: str = "auto",
        standardize: bool | None = None,
        vocab_size: int | None = None,
    ) -> None:
        self.path = path
        self.layout = base.choice("layout", layout, "auto", "chw", "hwc")
        self.vocab_size = base.integer("vocab_size", vocab_size, 2, optional=True)
        if standardize is None:  # on for dense features, never for token ids
            standardize = self.vocab_size is None
        self.standardize = base.flag("standardize", standardize)
        if self.standardize and self.vocab_size is not None:
            raise ValueError(
                "dataset.standardize=true is invalid with dataset.vocab_size: token ids are "
                "never standardised (set dataset.standardize=false or null)"
            )

    def has_clients(self) -> bool:
        with schema.open_npz(self.path) as f:
            return "client_train" in f.files

    def check(self, *, num_clients: int, max_memory_gb: float | None = None) -> None:
        info = schema.inspect_npz(self.path)
        with schema.open_npz(self.path) as f:
            if "client_test" in f.files and "client_train" not in f.files:
                raise ValueError(
                    f"dataset.path={self.path!r}: client_test without client_train; the test "
                    "rows' client ids need the clients' training rows"
                )
            ids = {k: schema.read_npz_array(f, self.path, k) for k in CLIENT_ARRAYS if k in f.files}
        for key, rows in (("client_train", "y_train"), ("client_test", "y_test")):
            if key in ids:
                _check_ids(key, ids[key], info.shapes[rows][0])
        if "client_test" in ids:
            unknown = np.setdiff1d(ids["client_test"], ids["client_train"])
            if len(unknown):
                raise ValueError(
                    f"dataset npz client_test: client id(s) {unknown[:10].tolist()} have no "
                    "rows in client_train"
                )
        if self.vocab_size is not None and len(info.shapes["X_train"]) != 2:
            raise ValueError(
                f"dataset npz X_train: shape {info.shapes['X_train']} is invalid with "
                "dataset.vocab_size: token data must be (samples, seq_len)"
            )

    def load(self, seed: int, num_clients: int, *, max_memory_gb: float | None = None) -> Dataset:
        path = self.path
        info = schema.inspect_npz(path)
        with schema.open_npz(path) as f:
            keys = [*schema.NPZ_ARRAYS, *(k for k in CLIENT_ARRAYS if k in f.files)]
            arrays = {k: schema.read_npz_array(f, path, k) for k in keys}
        for k in ("X_train", "X_test"):
            schema.check_features(k, arrays[k].shape, arrays[k].dtype)
            if not np.isfinite(arrays[k]).all():
                raise ValueError(f"dataset npz {k}: holds NaN or inf values")
        num_classes = schema.check_labels(arrays["y_train"], arrays["y_test"])
        if num_classes != info.num_classes or any(
            arrays[k].shape != info.shapes[k] for k in schema.NPZ_ARRAYS
        ):
            raise ValueError(f"dataset.path={str(path)!r} is invalid: the file changed while read")
        image, seq_len = None, None
        if self.vocab_size is not None:
            X_train, X_test = (self._tokens(k, arrays[k]) for k in ("X_train", "X_test"))
            seq_len = X_train.shape[1]
        else:
            Xtr, Xte = arrays["X_train"], arrays["X_test"]
            if Xtr.ndim > 2:
                Xtr, image = base.images_chw(Xtr, self.layout, "npz X_train")
                Xte, _ = base.images_chw(Xte, self.layout, "npz X_test")
            X_train, X_test = base.features(Xtr, Xte, self.standardize)
        natural = client_test = None
        if "client_train" in arrays:
            clients, natural = _groups(arrays["client_train"])
            if "client_test" in arrays:
                client_test = _groups(arrays["client_test"], clients)[1]
        return Dataset(
            self.label, X_train, arrays["y_train"].astype(np.int64), X_test,
            arrays["y_test"].astype(np.int64), num_classes, image, natural,
            vocab_size=self.vocab_size, seq_len=seq_len, client_test=client_test,
        )  # fmt: skip

    def _tokens(self, key: str, X: np.ndarray) -> np.ndarray:
        if X.ndim != 2 or not np.issubdtype(X.dtype, np.integer):
            raise ValueError(
                f"dataset npz {key}: shape {X.shape} dtype {X.dtype} is invalid with "
                "dataset.vocab_size: token data must be integers of shape (samples, seq_len)"
            )
        if X.min() < 0 or X.max() >= self.vocab_size:
            raise ValueError(
                f"dataset npz {key}: token ids span {int(X.min())}..{int(X.max())}: must be "
                f"in 0..{self.vocab_size - 1} (dataset.vocab_size={self.vocab_size})"
            )
        return X.astype(np.int64)


def _check_ids(key: str, ids: np.ndarray, rows: int) -> None:
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or len(ids) != rows:
        raise ValueError(
            f"dataset npz {key}: shape {ids.shape} dtype {ids.dtype} is invalid: must be 1-D "
            f"integer client ids, one per row ({rows} rows)"
        )


def _groups(
    ids: np.ndarray, clients: np.ndarray | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(client ids in ascending order, the sorted row indices of each); ``clients``
    fixes the order (a client without rows gets an empty array)."""
    if clients is None:
        clients = np.unique(ids)
    order = np.argsort(ids, kind="stable")
    starts = np.searchsorted(ids[order], clients, side="left")
    ends = np.searchsorted(ids[order], clients, side="right")
    parts = [np.sort(order[s:e]).astype(np.int64) for s, e in zip(starts, ends, strict=True)]
    return clients, parts
