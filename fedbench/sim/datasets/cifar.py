"""CIFAR-10 and CIFAR-100 from the official "python version" files in a local folder.

``dataset.path`` is the extracted ``cifar-10-python.tar.gz`` (``data_batch_1`` ..
``data_batch_5``, ``test_batch``) or ``cifar-100-python.tar.gz`` (``train``, ``test``)
from https://www.cs.toronto.edu/~kriz/cifar.html. Nothing is downloaded.

The files are pickles, and a pickle can run any code it names while it loads. They are
read with :class:`SafeUnpickler`, which builds only plain containers and numpy arrays
and refuses anything else in one line, so a hostile file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fedbench.sim.datasets import base
from fedbench.sim.datasets.base import Dataset, DataSource

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
SIDE, CHANNELS = 32, 3

# What numpy's ndarray pickles name (numpy 1.x and 2.x module paths), and _codecs.encode,
# which protocol-2 pickles use to carry bytes. Nothing here runs code of the file's choosing.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, str, bytes, numbers and numpy arrays only."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays allowed")


def read_batch(path: Path) -> dict[str, Any]:
    """One pickled batch as ``{str key: value}`` (Python 2 pickles carry bytes keys)."""
    try:
        blob = SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as e:  # any failure of an untrusted file is the user's data error
        raise ValueError(
            f"dataset cifar {path}: not a CIFAR python batch: {type(e).__name__}: {e}"
        ) from None
    if not isinstance(blob, dict):
        raise ValueError(
            f"dataset cifar {path}: not a CIFAR python batch: a {type(blob).__name__}, not a dict"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in blob.items()}


class CIFAR10(DataSource):
    """CIFAR-10's 50,000 training and 10,000 test images (3x32x32), the official split."""

    label = "cifar10"
    train_files: ClassVar[tuple[str, ...]] = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files: ClassVar[tuple[str, ...]] = ("test_batch",)
    classes: ClassVar[int] = 10
    archive: ClassVar[str] = "cifar-10-python.tar.gz"

    def __init__(
        self, path: str | None = None, layout: str = "chw", standardize: bool = True
    ) -> None:
        self.path = base.path("path", path, self._what())
        self.layout = base.choice("layout", layout, "chw", "hwc")
        self.standardize = base.flag("standardize", standardize)

    def _what(self) -> str:
        files = ", ".join((*self.train_files, *self.test_files))
        return (
            f"dataset={self.label} needs the official python batches in dataset.path=DIR: "
            f"{files} (extract {self.archive} from {URL}); nothing is downloaded"
        )

    def _label_key(self) -> str:
        return "labels"

    def check(self, *, num_clients: int, max_memory_gb: float | None = None) -> None:
        root = Path(self.path).expanduser()
        missing = [f for f in (*self.train_files, *self.test_files) if not (root / f).is_file()]
        if missing:
            raise ValueError(
                f"dataset.path={self.path!r} is invalid: missing {', '.join(missing)}; {self._what()}"
            )

    def _read(self, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for name in names:
            path = Path(self.path).expanduser() / name
            batch = read_batch(path)
            key = self._label_key()
            if "data" not in batch or key not in batch:
                raise ValueError(
                    f"dataset cifar {path}: needs keys data and {key}, has {sorted(batch)}"
                )
            x, y = np.asarray(batch["data"]), np.asarray(batch[key])
            if x.dtype != np.uint8 or x.ndim not in (2, 4) or len(x) != len(y) or y.ndim != 1:
                raise ValueError(
                    f"dataset cifar {path}: data {x.shape} {x.dtype} and labels {y.shape}: must be "
                    f"uint8 (n, {CHANNELS * SIDE * SIDE}) or (n, 32, 32, 3) images and n labels"
                )
            if x.ndim == 2:  # the official rows: 1024 red, 1024 green, 1024 blue values
                if x.shape[1] != CHANNELS * SIDE * SIDE:
                    raise ValueError(
                        f"dataset cifar {path}: rows of {x.shape[1]} values: must be 3072"
                    )
                x = x.reshape(len(x), CHANNELS, SIDE, SIDE)
            else:
                x, shape = base.images_chw(x, self.layout, f"cifar {path.name}")
                if shape != (CHANNELS, SIDE, SIDE):
                    raise ValueError(
                        f"dataset cifar {path}: images of {shape} (channels, height, width) with "
                        f"dataset.layout={self.layout}: must be (3, 32, 32)"
                    )
            if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= self.classes:
                raise ValueError(
                    f"dataset cifar {path}: labels must be integers 0..{self.classes - 1}"
                )
            xs.append(x)
            ys.append(y.astype(np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    def load(self, seed: int, num_clients: int, *, max_memory_gb: float | None = None) -> Dataset:
        self.check(num_clients=num_clients)
        X_train, y_train = self._read(self.train_files)
        X_test, y_test = self._read(self.test_files)
        X_train, X_test = base.features(X_train, X_test, self.standardize)
        return Dataset(
            self.label, X_train, y_train, X_test, y_test, self.classes, (CHANNELS, SIDE, SIDE)
        )


class CIFAR100(CIFAR10):
    """CIFAR-100 (``train``, ``test``): 100 fine labels, or the 20 coarse superclasses."""

    label = "cifar100"
    train_files = ("train",)
    test_files = ("test",)
    archive = "cifar-100-python.tar.gz"

    def __init__(
        self, path: str | None = None, layout: str = "chw", standardize: bool = True,
        labels: str = "fine",
    ) -> None:  # fmt: skip
        super().__init__(path, layout, standardize)
        self.labels = base.choice("labels", labels, "fine", "coarse")
        self.classes = 100 if self.labels == "fine" else 20

    def _label_key(self) -> str:
        return f"{self.labels}_labels"
