"""How much memory a run needs, estimated from its config and data before any training,
so a config that cannot fit is refused with the key to lower instead of being killed by
the OOM killer (exit 137, no message) minutes in.

The estimate counts only the big, certain allocations, each as a lower bound: a run
refused here could not have run; a run let through may still need somewhat more. The
limit is the memory available now (host: ``MemAvailable`` of ``/proc/meminfo`` or
psutil; CUDA: ``torch.cuda.mem_get_info``), or ``max_memory_gb`` when set.

Torch-free at import: :func:`check_synthetic` runs from ``fedbench.schema`` before torch
is imported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

GB = 1e9
FLOAT32, FLOAT64, INT64 = 4, 8, 8
# Stacked copies of the parameters per client of a trained chunk: the local model, its
# momentum buffer, the delta and the decoded update.
COPIES_PER_CLIENT = 4
# Activations kept per sample and layer unit: forward (saved for backward), gradient, mask.
ACTIVATION_COPIES = 3
# The cohort engine pads every minibatch to batch_size even when a client holds fewer
# samples (fedbench/sim/cohort.py). Set False once it caps the batch at its largest
# client: then a batch_size beyond the data costs nothing and is not refused.
PADS_TO_BATCH_SIZE = True
# Which key to lower, by the part of the estimate that dominates.
PART_KEY = {
    "data": "dataset",
    "synthetic_generation": "num_clients",
    "client_states": "num_clients",
    "cohort_params": "cohort_chunk",
    "cohort_index": "cohort_chunk",
    "activations": "batch_size",
    "server_params": "model",
}


def available_bytes(device: str = "cpu") -> tuple[int, str]:
    """(bytes available now, where that number comes from) on ``device``."""
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free), f"free memory of {device}"
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available), "available RAM (psutil)"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available RAM (MemAvailable)"
    except OSError:
        pass
    return 2**63 - 1, "unknown available RAM"  # no way to tell: never refuse


def limit_bytes(cfg: Mapping[str, Any], device: str | None = None) -> tuple[int, str]:
    """The budget a run must fit: ``max_memory_gb`` when set, else what is available."""
    cap = cfg.get("max_memory_gb")
    if cap is not None:
        return int(float(cap) * GB), f"max_memory_gb={cap}"
    return available_bytes(device if device is not None else str(cfg.get("device", "cpu")))


def _refuse(key: str, value: Any, need: int, parts: Mapping[str, int], limit: tuple[int, str]):
    shown = ", ".join(f"{k} {v / GB:.2f} GB" for k, v in parts.items() if v >= 0.01 * need)
    return ValueError(
        f"{key}={value!r} is invalid: the run needs at least {need / GB:.2f} GB ({shown}) but "
        f"{limit[0] / GB:.2f} GB is the limit ({limit[1]}); lower {key}, or set "
        "max_memory_gb=N to allow more"
    )


# -- synthetic data, before it is generated -------------------------------------------------
def synthetic_bytes(dataset: Mapping[str, Any], num_clients: int, total_samples: int) -> int:
    """Peak bytes while generating Synthetic(alpha, beta): the float64 features of every
    sample and their train/test copies, alive at once (``data._synthetic``)."""
    return 2 * int(total_samples) * int(dataset["dimension"]) * FLOAT64


def _synthetic_samples_estimate(dataset: Mapping[str, Any], num_clients: int) -> int:
    """Total samples ``num_clients`` synthetic clients will have, without generating them:
    a lower bound first (every client has at least min(min_samples, max_samples)), then,
    when drawing is cheap, the mean of sizes drawn from an independent generator."""
    lo = int(dataset["min_samples"])
    cap = dataset.get("max_samples")
    if cap is not None:
        lo = min(lo, int(cap))
    if num_clients > 10_000_000:  # the draw itself would be large: the bound is enough
        return num_clients * lo
    draw = min(num_clients, 10_000)
    rng = np.random.default_rng(0)
    sizes = rng.lognormal(float(dataset["size_mu"]), float(dataset["size_sigma"]), draw)
    sizes = sizes.astype(np.int64) + int(dataset["min_samples"])
    if cap is not None:
        sizes = np.minimum(sizes, int(cap))
    # a sample mean of a heavy tail tends to fall short of the true one; 0.9 of it is
    # a lower bound in practice (capped sizes: within ~1% at 10,000 draws)
    return max(num_clients * lo, int(0.9 * float(sizes.mean()) * num_clients))


def check_synthetic(cfg: Mapping[str, Any], sizes: Sequence[int] | None = None) -> None:
    """Refuse a ``dataset=synthetic`` config whose generation cannot fit in host memory,
    before generating anything. ``sizes`` (samples per client), when known, replace the
    estimate. Knob type errors are left to ``data``'s own checks."""
    dataset, n = cfg["dataset"], cfg["num_clients"]
    try:
        total = int(np.sum(sizes)) if sizes is not None else _synthetic_samples_estimate(dataset, n)
        need = synthetic_bytes(dataset, n, total)
    except (KeyError, TypeError, ValueError):
        return
    limit = limit_bytes(cfg, "cpu")  # generated on the host, whatever the device
    if need > limit[0]:
        raise _refuse("num_clients", n, need, {"synthetic_generation": need}, limit)


# -- a whole run, once the data and model are known ----------------------------------------
def _widest(model: Mapping[str, Any], features: int, classes: int, image: Any) -> int:
    """Units of the widest layer output (or input) per sample."""
    name = model.get("name")
    if name == "mlp":
        return max(features, classes, *[int(h) for h in model.get("hidden", [128, 64])])
    if name == "cnn" and image is not None:
        c, h, w = image
        c1, c2 = (int(ch) for ch in model.get("channels", [16, 32]))
        return max(c * h * w, c1 * h * w, c2 * (h // 2) * (w // 2))
    return max(features, classes)


def estimate_bytes(
    cfg: Mapping[str, Any],
    dataset: Any,
    num_params: int,
    *,
    client_sizes: Sequence[int] | None = None,
    activation_bytes_per_sample: int | None = None,
) -> dict[str, int]:
    """Lower-bound bytes of a run by part: data on the device, the server's parameter
    copies, per-client codec states, the trained chunk's stacked copies and index, and
    its activations. ``dataset`` is a ``data.Dataset``; ``client_sizes`` the samples per
    client when the partition is known (else the mean size stands in for the largest);
    ``activation_bytes_per_sample`` what the model keeps per training sample, when
    measured (else the widest layer x ``ACTIVATION_COPIES`` float32 values)."""
    n_train, n_test = len(dataset.y_train), len(dataset.y_test)
    features = int(np.prod(dataset.X_train.shape[1:]))
    num_clients = int(cfg["num_clients"])
    if client_sizes is not None and len(client_sizes):
        largest = int(max(client_sizes))
    else:
        largest = math.ceil(n_train / num_clients)  # the largest client is at least the mean
    concurrent = int(cfg["clients_per_round"])
    if cfg.get("aggregation") == "fedbuff" and cfg.get("async_concurrency") is not None:
        concurrent = int(cfg["async_concurrency"])
    chunk = min(concurrent, num_clients)
    if isinstance(cfg.get("cohort_chunk"), int):  # else chosen by the engine: the cohort bounds it
        chunk = min(chunk, int(cfg["cohort_chunk"]))
    batch = int(cfg["batch_size"])
    if not PADS_TO_BATCH_SIZE:  # a batch larger than a client's data is its whole data
        batch = min(batch, largest)
    participants = min(num_clients, int(cfg["rounds"]) * concurrent)
    stateful = (
        bool(cfg["compressor"].get("error_feedback")) or cfg.get("lazy_threshold") is not None
    )
    if activation_bytes_per_sample is None:
        widest = _widest(cfg["model"], features, dataset.num_classes, dataset.image_shape)
        activation_bytes_per_sample = widest * FLOAT32 * ACTIVATION_COPIES
    return {
        "data": (n_train + n_test) * (features * FLOAT32 + INT64),
        "server_params": 3 * num_params * FLOAT32,  # global model, server momentum, broadcast
        "client_states": (participants if stateful else 0) * num_params * FLOAT32,
        "cohort_params": chunk * COPIES_PER_CLIENT * num_params * FLOAT32,
        "cohort_index": 2 * chunk * max(largest, batch) * INT64,  # indices and their shuffle
        "activations": chunk * batch * int(activation_bytes_per_sample),
    }


def check(
    cfg: Mapping[str, Any],
    dataset: Any,
    num_params: int,
    *,
    client_sizes: Sequence[int] | None = None,
    activation_bytes_per_sample: int | None = None,
) -> None:
    """Refuse a run whose :func:`estimate_bytes` exceeds the limit, naming the key that
    drives the largest part (``batch_size``, ``num_clients``, ``cohort_chunk``, ...)."""
    parts = estimate_bytes(
        cfg,
        dataset,
        num_params,
        client_sizes=client_sizes,
        activation_bytes_per_sample=activation_bytes_per_sample,
    )
    need = sum(parts.values())
    limit = limit_bytes(cfg)
    if need <= limit[0]:
        return
    top = max(parts, key=parts.get)
    key = PART_KEY[top]
    chunk = cfg.get("cohort_chunk")
    if top == "activations" and isinstance(chunk, int) and int(cfg["batch_size"]) < chunk:
        key = "cohort_chunk"  # of the two factors, the larger is the one to lower
    if key in ("dataset", "model"):
        key, value = f"{key}.name", cfg[key].get("name")
    else:
        value = cfg[key]
    raise _refuse(key, value, need, parts, limit)
