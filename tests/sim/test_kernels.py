"""The compiled kernels of the cohort's fast paths equal what they stand for.

- ``models._pool.max_pool2``: ``F.max_pool2d(x, 2)``'s values and gradient, bit for bit,
  ties (the first maximum in the window's row-major scan) and odd sizes included;
- ``models.stacked._Recurrence``: the LSTM recurrence with its backward by hand, against
  torch.autograd.gradcheck in fp64 and its fp32 compiled step against fp64;
- ``models.stacked._InputConv``: the first conv's per-client weight gradient, against
  autograd of the grouped conv it replaces.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedbench.sim.models._pool import max_pool2
from fedbench.sim.models.stacked import _conv, _fold, _input_conv, _Recurrence


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 5, 7, 9), (3, 2, 5, 4), (2, 4, 28, 28)])
def test_max_pool2_is_torchs_bit_for_bit(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g)
    x[:, :, :2, :2] = 0.5  # a window of four exact ties
    x[0, 0, 2, 3] = x[0, 0, 3, 2] = 9.0  # two maxima in one window: the first takes it
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = F.max_pool2d(a, 2), max_pool2(b)
    assert torch.equal(got, want)
    dy = torch.randn(want.shape, generator=g)
    assert torch.equal(torch.autograd.grad(got, b, dy)[0], torch.autograd.grad(want, a, dy)[0])


def test_max_pool2_falls_back_off_the_fast_path():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    assert torch.equal(max_pool2(x), F.max_pool2d(x, 2))
    y = torch.randn(2, 6, 6, 3).permute(0, 3, 1, 2)  # not contiguous
    assert torch.equal(max_pool2(y), F.max_pool2d(y, 2))


def _reference(gates_x, w_hh):
    """The step-by-step graph the module builds (``leaf._LSTMLayer``), stacked."""
    C, B, T, G = gates_x.shape
    h = c = gates_x.new_zeros(C, B, G // 4)
    out = []
    for t in range(T):
        i, f, z, o = (gates_x[:, :, t] + torch.bmm(h, w_hh.transpose(1, 2))).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out, 2)


@pytest.mark.parametrize("T", [1, 2, 6])
def test_recurrence_backward_passes_gradcheck(T):
    g = torch.Generator().manual_seed(T)
    gx = torch.randn(2, 3, T, 12, generator=g, dtype=torch.float64).requires_grad_()
    w = (torch.randn(2, 12, 3, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    assert torch.autograd.gradcheck(_Recurrence.apply, (gx, w))
    torch.testing.assert_close(_Recurrence.apply(gx, w), _reference(gx, w))


def test_recurrence_fp32_compiled_step_matches_fp64():
    g = torch.Generator().manual_seed(0)
    gx = torch.randn(3, 4, 9, 20, generator=g)
    w = torch.randn(3, 20, 5, generator=g) * 0.5
    dy = torch.randn(3, 4, 9, 5, generator=g)
    grads = {}
    for dt in (torch.float32, torch.float64):
        a, b = gx.to(dt).requires_grad_(), w.to(dt).requires_grad_()
        grads[dt] = torch.autograd.grad(_Recurrence.apply(a, b), (a, b), dy.to(dt))
    for got, want in zip(grads[torch.float32], grads[torch.float64], strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("clients", "image", "out", "k", "stride", "bias"),
    [(3, (1, 9, 9), 4, 3, 1, True), (2, (3, 8, 8), 5, 3, 2, False), (4, (1, 7, 7), 3, 5, 1, True)],
)
def test_input_conv_matches_the_grouped_conv(clients, image, out, k, stride, bias):
    g = torch.Generator().manual_seed(clients * k)
    C, B = clients, 5
    x = torch.randn(C, B, image[0] * image[1] * image[2], generator=g)
    w0 = torch.randn(C, out, image[0], k, k, generator=g)
    b0 = torch.randn(C, out, generator=g) if bias else None
    leaves = [t.clone().requires_grad_() for t in (w0, b0) if t is not None]
    ref_leaves = [t.clone().requires_grad_() for t in (w0, b0) if t is not None]
    kw = {"stride": stride, "padding": k // 2}
    y = _input_conv(x, image, *leaves, *([] if bias else [None]), **kw)
    ref = _conv(_fold(x, image), *ref_leaves, *([] if bias else [None]), **kw)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    dy = torch.randn(ref.shape, generator=g)
    grads = torch.autograd.grad(y, leaves, dy)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dy)
    assert grads[0].shape == w0.shape
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
