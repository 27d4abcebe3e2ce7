"""pytest-benchmark timings of every compressor's kernels (encode, decode, both).

Each group is one compressor setting at one tensor size on one device, and holds a
reference ``clone`` (``x.clone()``: a copy into new memory, which like a fresh message
pays for its allocation), so every kernel can be read as a multiple of the clone time
measured in the same run; ``benchmarks/gate.py`` compares those multiples with a
committed baseline. ``extra_info`` carries the kernel id, elements, the dense fp32
bytes of the input, the wire bytes and the compression ratio (dense / wire).

Compressor families are discovered from ``conf/compressor/`` (named variants, whose
YAML has a ``defaults:`` list, are skipped); the settings the README quotes are pinned
in ``SETTINGS``. A setting whose compressor or parameter does not exist yet is skipped
with the reason, so it is timed as soon as it lands.

Run: ``python -m pytest -c benchmarks/pytest.ini benchmarks`` (``make bench``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from fedbench import compress

SEED = 1234
# Families the design names; listed even before they exist so the skip says so.
EXPECTED = ("none", "fp16", "bf16", "quant", "qsgd", "terngrad", "sign", "natural")
EXPECTED += ("topk", "randk", "stc", "powersgd", "svd")
# Families whose kernels work on a matrix: timed on a matrix of about the same size.
MATRIX_FAMILIES = {"powersgd", "svd"}


@dataclass(frozen=True)
class Setting:
    """One compressor setting to time, and what its output must satisfy."""

    family: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    # Bound on ||decoded - x|| / ||x|| for N(0, 1) input; None => only the generic checks.
    rel_error: float | None = None
    # Also time torch.topk(|x|, k) at this fraction, the reference exact top-k must match.
    topk_reference: float | None = None
    # Larger tensors are skipped: a kernel this slow would take minutes a round.
    max_numel: int | None = None

    @property
    def label(self) -> str:
        if not self.params:
            return self.family
        inner = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.family}({inner})"


# The settings the README's table quotes (issue 2's speed floors); other families are
# timed at their YAML defaults.
SETTINGS: dict[str, list[Setting]] = {
    "none": [Setting("none", rel_error=0.0)],
    "fp16": [Setting("fp16", rel_error=1e-3)],
    "bf16": [Setting("bf16", rel_error=1e-2)],
    "quant": [Setting("quant", {"bits": 8}, rel_error=0.05)],
    "sign": [Setting("sign", rel_error=0.8)],
    "natural": [Setting("natural", rel_error=0.5)],
    # Dropping values can only shrink the error below ||x||; the same for projections.
    "topk": [
        Setting("topk", {"ratio": 0.01}, rel_error=1.0, topk_reference=0.01),
        Setting("topk", {"ratio": 0.01, "approximate": True}, rel_error=1.0),
    ],
    # Unbiased random-k scales by n/k: E||x' - x||^2 = (n/k - 1)||x||^2, about 10 ||x||.
    "randk": [Setting("randk", {"ratio": 0.01}, rel_error=15.0)],
    "powersgd": [Setting("powersgd", {"rank": 4}, rel_error=1.0)],
    # A full SVD of 4096 x 2048 takes tens of seconds a call here: a reference, not a kernel.
    "svd": [Setting("svd", rel_error=1.0, max_numel=10**6)],
    # Every round starts from a fresh state: time DGC's steady state, not its first warm-up
    # call (which keeps a quarter of the values).
    "dgc": [Setting("dgc", {"warmup_rounds": 0})],
}


def _is_variant(name: str) -> bool:
    path = compress.config_dir() / "compressor" / f"{name}.yaml"
    return "defaults" in (OmegaConf.load(path) or {})


def settings() -> list[Setting]:
    """The pinned settings plus every base family found in ``conf/compressor/``."""
    found = [n for n in compress.available() if not _is_variant(n)]
    families = list(EXPECTED) + [n for n in found if n not in EXPECTED]
    return [s for f in families for s in SETTINGS.get(f, [Setting(f)])]


SETTING_BY_LABEL = {s.label: s for s in settings()}
LABELS = list(SETTING_BY_LABEL)


def tensor_shape(family: str, numel: int) -> tuple[int, ...]:
    """A vector of ``numel`` values, or for matrix codecs a matrix of about that size.

    10^7 maps to 4096 x 2048 (8.4M), the matrix issue 2's PowerSGD floor is stated on.
    """
    if family not in MATRIX_FAMILIES:
        return (numel,)
    if numel == 10**7:
        return (4096, 2048)
    rows = math.isqrt(numel)
    return (rows, numel // rows)


def size_label(n: int) -> str:
    """1000000 -> ``"1e6"``; other counts as plain integers."""
    exp = math.log10(n)
    return f"1e{int(exp)}" if exp == int(exp) else str(n)


def shape_label(shape: tuple[int, ...]) -> str:
    if len(shape) == 1:
        return f"n={size_label(shape[0])}"
    return "x".join(map(str, shape))


_DATA: dict[tuple[tuple[int, ...], str], torch.Tensor] = {}


def data(shape: tuple[int, ...], device: str) -> torch.Tensor:
    """N(0, 1) fp32 input, seeded, cached per shape and device."""
    key = (shape, device)
    if key not in _DATA:
        if len(_DATA) >= 3:  # a few 40 MB tensors at most
            del _DATA[next(iter(_DATA))]
        g = torch.Generator().manual_seed(SEED)
        _DATA[key] = torch.randn(shape, generator=g).to(device)
    return _DATA[key]


def build(setting: Setting) -> compress.Compressor:
    """The compressor, or a skip naming what does not exist yet."""
    if setting.family not in compress.available():
        pytest.skip(f"compressor {setting.family!r} is not in conf/compressor/ yet")
    try:
        # The codec's own kernels: error feedback (on by default for biased codecs) adds
        # one add and one subtract per value, the same for every codec.
        return compress.build(setting.family, error_feedback=False, **setting.params)
    except ValueError as e:
        if "has no parameter" in str(e):
            pytest.skip(f"{setting.label}: {e}")
        raise


def generator(device: str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(SEED)


def check_decoded(setting: Setting, x: torch.Tensor, decoded: torch.Tensor) -> None:
    """Shape, dtype and device right; finite; error within the setting's bound; and
    pointing the way x points (a codec that returns zeros is broken, not fast)."""
    assert decoded.shape == x.shape, f"{setting.label}: shape {decoded.shape} != {x.shape}"
    assert decoded.dtype == x.dtype, f"{setting.label}: dtype {decoded.dtype} != {x.dtype}"
    assert decoded.device.type == x.device.type, f"{setting.label}: wrong device"
    assert bool(torch.isfinite(decoded).all()), f"{setting.label}: non-finite output"
    if setting.rel_error == 0.0:
        torch.testing.assert_close(decoded, x, rtol=0, atol=0)
        return
    err = float(torch.linalg.vector_norm(decoded - x) / torch.linalg.vector_norm(x))
    if setting.rel_error is not None:
        assert err <= setting.rel_error + 1e-4, (
            f"{setting.label}: relative error {err:.4g} > {setting.rel_error}"
        )
    cos = float(torch.nn.functional.cosine_similarity(decoded.flatten(), x.flatten(), dim=0))
    # Random-k at 1% keeps cos ~ 0.1; anything near 0 is noise, not a compression.
    assert cos >= 0.05, f"{setting.label}: cosine(decoded, x) = {cos:.3g} < 0.05"


def _record(benchmark: Any, kernel_id: str, op: str, setting: Setting, x: torch.Tensor) -> None:
    benchmark.extra_info.update(
        kernel=kernel_id,
        op=op,
        compressor=setting.family,
        setting=setting.label,
        compressor_params=dict(setting.params),
        shape=list(x.shape),
        device=x.device.type,
        elements=x.numel(),
        input_bytes=x.numel() * x.element_size(),
    )


def _first_message(c: compress.Compressor, label: str, fresh) -> bytes:
    """One message, for its size; a codec that refuses this input (a documented limit,
    raised as ValueError) is skipped with its own words."""
    try:
        return c.encode(*fresh()[0])
    except ValueError as e:
        pytest.skip(f"{label} refuses this input: {e}")


OPS = ("clone", "encode", "decode", "encode+decode", "torch.topk")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("label", LABELS)
def test_kernel(benchmark, timer, label: str, size: int, device: str, op: str) -> None:
    """One kernel of one setting on one tensor; the result is checked after timing."""
    setting = SETTING_BY_LABEL[label]
    if op == "torch.topk" and setting.topk_reference is None:
        pytest.skip("the torch.topk reference is timed in the exact top-k groups only")
    if setting.max_numel is not None and size > setting.max_numel:
        pytest.skip(f"{label} is timed up to {setting.max_numel} values (too slow beyond)")
    c = build(setting)
    x = data(tensor_shape(setting.family, size), device)
    group = f"{label} {shape_label(tuple(x.shape))} {device}"
    benchmark.group = group
    kernel_id = f"{group} :: {op}"
    _record(benchmark, kernel_id, op, setting, x)

    def fresh() -> tuple[tuple, dict]:
        state = c.init_state(x.shape, dtype=x.dtype, device=x.device)
        return (x, generator(device), state), {}

    msg = _first_message(c, label, fresh)
    dense = x.numel() * x.element_size()
    benchmark.extra_info.update(wire_bytes=len(msg), compression_ratio=dense / len(msg))

    if op == "clone":
        out = timer(kernel_id, torch.Tensor.clone, lambda: ((x,), {}), device=device)
        torch.testing.assert_close(out, x, rtol=0, atol=0)
        assert out.data_ptr() != x.data_ptr()
        benchmark.extra_info.update(wire_bytes=dense, compression_ratio=1.0)
    elif op == "encode":
        out = timer(kernel_id, c.encode, fresh, device=device)
        assert out == msg, f"{label}: same input and seed gave different bytes"
        check_decoded(setting, x, c.decode(out, device))
    elif op == "decode":
        out = timer(kernel_id, c.decode, lambda: ((msg, device), {}), device=device)
        _, sent = c.compress(*fresh()[0])
        torch.testing.assert_close(out, sent)  # the receiver sees what the sender meant
        check_decoded(setting, x, out)
    elif op == "encode+decode":
        out = timer(kernel_id, lambda x, g, s: c.decode(c.encode(x, g, s), device), fresh,
                    device=device)  # fmt: skip
        check_decoded(setting, x, out)
    else:  # torch.topk: the work exact top-k cannot avoid, at the setting's fraction
        k = max(1, int(setting.topk_reference * x.numel()))
        flat = x.flatten()
        values, _ = timer(
            kernel_id,
            lambda v: torch.topk(v.abs(), k),
            lambda: ((flat,), {}),
            device=device,
        )
        assert values.shape == (k,) and bool((values[:-1] >= values[1:]).all())
        benchmark.extra_info.update(wire_bytes=None, compression_ratio=None)


COHORT_OPS = ("clone", "compress_batch", "decode_batch")


@pytest.mark.parametrize("op", COHORT_OPS)
@pytest.mark.parametrize("label", LABELS)
def test_cohort(benchmark, timer, label: str, cohort: tuple[int, int], device: str, op: str):
    """The batched path the simulation uses every round: a whole cohort in one call."""
    setting = SETTING_BY_LABEL[label]
    c = build(setting)
    clients, values = cohort
    shape = tensor_shape(setting.family, values)
    x = data((clients, *shape), device)
    group = f"{label} cohort {clients}x{'x'.join(size_label(d) for d in shape)} {device}"
    benchmark.group = group
    kernel_id = f"{group} :: {op}"
    _record(benchmark, kernel_id, op, setting, x)

    def fresh() -> tuple[tuple, dict]:
        gens = [torch.Generator(device=device).manual_seed(SEED + i) for i in range(clients)]
        states = [c.init_state(shape, dtype=x.dtype, device=x.device) for _ in range(clients)]
        return (x, gens, states), {}

    try:
        msgs, sent = c.compress_batch(*fresh()[0])
    except ValueError as e:
        pytest.skip(f"{label} refuses this input: {e}")
    dense = x.numel() * x.element_size()
    wire = sum(map(len, msgs))
    benchmark.extra_info.update(clients=clients, wire_bytes=wire, compression_ratio=dense / wire)

    if op == "clone":
        out = timer(kernel_id, torch.Tensor.clone, lambda: ((x,), {}), device=device)
        torch.testing.assert_close(out, x, rtol=0, atol=0)
        benchmark.extra_info.update(wire_bytes=dense, compression_ratio=1.0)
    elif op == "compress_batch":
        out_msgs, out = timer(kernel_id, c.compress_batch, fresh, device=device)
        assert out_msgs == msgs, f"{label}: same input and seeds gave different bytes"
        torch.testing.assert_close(out, sent)
        check_decoded(setting, x, out)
    else:
        out = timer(kernel_id, c.decode_batch, lambda: ((msgs, device), {}), device=device)
        torch.testing.assert_close(out, sent)
        check_decoded(setting, x, out)


ROTATION_OPS = ("clone", "rotate", "unrotate")
ROTATION_ROWS = (1, 10)  # one client (its vector in cache) and a cohort of ten (it streams)


@pytest.mark.parametrize("op", ROTATION_OPS)
@pytest.mark.parametrize("rows", ROTATION_ROWS)
def test_rotation_stage(benchmark, timer, rows: int, device: str, op: str) -> None:
    """The randomised Hadamard stage of drive / eden / rotated_quant alone, d = 2^20."""
    from fedbench.compress import hadamard

    d = 2**20
    x = data((rows, d), device)
    seeds = list(range(1, rows + 1))
    group = f"hadamard rotation {rows}x2^20 {device}"
    benchmark.group = group
    kernel_id = f"{group} :: {op}"
    benchmark.extra_info.update(
        kernel=kernel_id, op=op, compressor="hadamard", setting="rotation", shape=list(x.shape),
        device=x.device.type, elements=x.numel(), input_bytes=x.numel() * x.element_size(),
    )  # fmt: skip
    y = hadamard.rotate(x, seeds)
    if op == "clone":
        out = timer(kernel_id, torch.Tensor.clone, lambda: ((x,), {}), device=device)
        assert torch.equal(out, x)
    elif op == "rotate":
        out = timer(kernel_id, hadamard.rotate, lambda: ((x, seeds), {}), device=device)
        assert torch.equal(out, y)
    else:
        out = timer(kernel_id, hadamard.unrotate, lambda: ((y, seeds, d), {}), device=device)
        torch.testing.assert_close(out, x, rtol=1e-4, atol=1e-4)
