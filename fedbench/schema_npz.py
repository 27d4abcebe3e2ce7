"""Checking a user's own arrays (``dataset=npz``) without torch: the file, its four
arrays' headers and its labels, each problem one ``ValueError`` naming ``dataset.path``
or the array. Re-exported by :mod:`fedbench.schema`; the npz data source uses it too.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# -- the user's own arrays (dataset=npz) ----------------------------------------------------
NPZ_ARRAYS = ("X_train", "y_train", "X_test", "y_test")
MAX_CLASSES = 100_000  # a label beyond this is a data error (and a giant output layer)


@dataclass(frozen=True)
class NpzInfo:
    """What an npz holds, read from its labels and the headers of its feature arrays."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    num_classes: int


def _npz_error(path: Any, problem: str) -> ValueError:
    return ValueError(f"dataset.path={str(path)!r} is invalid: {problem}")


def open_npz(path: Any) -> Any:
    """``np.load`` of an npz, ValueError naming ``dataset.path`` for anything else."""
    if not path:
        raise ValueError("dataset.path is missing: dataset=npz needs dataset.path=FILE.npz")
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise _npz_error(path, "no such file")
    try:
        f = np.load(p, allow_pickle=False)
    except Exception as e:
        raise _npz_error(path, f"not a readable .npz file: {type(e).__name__}: {e}") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise _npz_error(path, "not a readable .npz file: a single array (.npy); save with "
                         f"np.savez(FILE, {', '.join(k + '=...' for k in NPZ_ARRAYS)})")  # fmt: skip
    return f


def read_npz_array(f: Any, path: Any, key: str) -> np.ndarray:
    """One array of an open npz; a corrupt member (bad CRC, truncated) is a ValueError."""
    try:
        return f[key]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise _npz_error(
            path, f"not a readable .npz file: {key}: {type(e).__name__}: {e}"
        ) from None


def _npz_header(f: Any, path: Any, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one member from its .npy header, without reading its data."""
    try:
        with f.zip.open(key + ".npy") as member:
            fmt = np.lib.format
            version = fmt.read_magic(member)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(member)
    except Exception as e:
        raise _npz_error(
            path, f"not a readable .npz file: {key}: {type(e).__name__}: {e}"
        ) from None
    return tuple(shape), dtype


def check_features(key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """X arrays: real numbers (integers or floats), (samples, features...), >= 1 sample."""
    real = np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    if len(shape) < 2 or shape[0] == 0 or not real:
        raise ValueError(
            f"dataset npz {key}: shape {shape} dtype {dtype} is invalid: must be real numbers "
            "(integers or floats, not complex) of shape (samples, features...) with at least "
            "one sample"
        )


def check_labels(y_train: np.ndarray, y_test: np.ndarray) -> int:
    """Labels must be 1-D integers in 0..N-1, N <= MAX_CLASSES, every test class seen in
    training; returns N. Floats are refused even when integral: a float label column is
    more often a regression target or a mixed-up array than a class id."""
    for key, y in (("y_train", y_train), ("y_test", y_test)):
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"dataset npz {key}: shape {y.shape} dtype {y.dtype} is invalid: must be 1-D "
                "integers (class ids 0..N-1)"
            )
        if len(y) == 0:
            raise ValueError(f"dataset npz {key}: holds no labels")
        lo, hi = int(y.min()), int(y.max())  # python ints: exact for uint64 and int64
        if lo < 0:
            raise ValueError(f"dataset npz {key}: label {lo} is invalid: must be >= 0")
        if hi >= MAX_CLASSES:
            raise ValueError(
                f"dataset npz {key}: labels must be 0..N-1 with N <= {MAX_CLASSES}; got max {hi}"
            )
    num_classes = max(int(y_train.max()), int(y_test.max())) + 1
    if num_classes < 2:
        raise ValueError("dataset npz y_train: needs at least 2 classes")
    seen = np.bincount(y_train.astype(np.int64), minlength=num_classes) > 0
    unseen = np.unique(y_test)[~seen[np.unique(y_test).astype(np.int64)]]
    if len(unseen):
        raise ValueError(
            f"dataset npz y_test: class(es) {unseen[:10].tolist()} never appear in y_train, so "
            "held-out accuracy on them is 0 whatever the codec; drop them from the test split "
            "or give the training split samples of them"
        )
    return num_classes


def inspect_npz(path: Any) -> NpzInfo:
    """Check ``dataset.path`` without torch: a readable npz with the four arrays, valid
    labels (read in full, so their CRC is checked) and valid feature headers."""
    f = open_npz(path)
    with f:
        missing = [k for k in NPZ_ARRAYS if k not in f.files]
        if missing:
            raise ValueError(
                f"dataset.path={str(path)!r}: missing array(s) {missing}; an npz needs "
                f"{list(NPZ_ARRAYS)}"
            )
        shapes, dtypes = {}, {}
        for key in ("X_train", "X_test"):
            shapes[key], dtypes[key] = _npz_header(f, path, key)
            check_features(key, shapes[key], dtypes[key])
        if shapes["X_train"][1:] != shapes["X_test"][1:]:
            raise ValueError(
                f"dataset npz X_test: feature shape {shapes['X_test'][1:]} differs from "
                f"X_train's {shapes['X_train'][1:]}"
            )
        ys = {k: read_npz_array(f, path, k) for k in ("y_train", "y_test")}
        for key, xkey in (("y_train", "X_train"), ("y_test", "X_test")):
            y = ys[key]
            shapes[key], dtypes[key] = y.shape, y.dtype
            if y.ndim == 1 and len(y) != shapes[xkey][0]:
                raise ValueError(
                    f"dataset npz {key}: {len(y)} labels for {shapes[xkey][0]} rows of {xkey}"
                )
        num_classes = check_labels(ys["y_train"], ys["y_test"])
    return NpzInfo(shapes, dtypes, num_classes)
