"""Batched forwards written by hand for the built-in conv nets and the LSTM, registered
as fast paths (``models.fast``); autograd gives their backward.

``torch.func.vmap`` trains any module, but on a CPU its batching rules leave
max-pooling, GroupNorm and elementwise ops on permuted, non-contiguous tensors, and
those dominate: the small CNN trained 2x slower batched than client by client. Here
the cohort stays in one contiguous layout instead:

* conv nets: (batch, clients * channels, H, W): a conv with per-client weights is one
  grouped conv (``groups=clients``), GroupNorm with G groups is GroupNorm with
  ``clients * G`` groups (a client's channels are contiguous, so each group stays inside
  one client), ReLU and pooling do not care; the head is a batched GEMM. Pooling runs
  before the ReLU (the same values and gradients: both are monotone, and a ReLU's
  gradient at 0 is 0), through a compiled 2x2 max-pool on the CPU (``models._pool``:
  torch's NCHW kernel was a third of the small CNN's step). Everything stays NCHW: a
  channels-last ResNet corrupted the heap inside oneDNN on an AVX2 CPU.
* the LSTM: (clients, batch, ...): the embedding is one lookup into the stacked tables,
  each step's recurrence one ``bmm``, its backward written by hand (:class:`_Recurrence`).

Each must equal the module it stands for, client by client: ``ModelSpec.check``
compares the two on its dry run and refuses the model otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.sim.models._lstm import step_backward
from fedbench.sim.models._pool import max_pool2
from fedbench.sim.models.fast import register
from fedbench.sim.models.leaf import CharLSTM, FemnistCNN
from fedbench.sim.models.nets import CNN
from fedbench.sim.models.resnet import ResNet


class _StackedLinear(torch.autograd.Function):
    """y = h @ w^T + b per client: h (C, B, in), w (C, out, in), b (C, out) or None.

    Autograd's own backward of ``baddbmm(b, h, w^T)`` yields dL/dw as a transposed view,
    and the optimiser's adds over it are strided: for FEMNIST's 3136x2048 layer that was
    4x the GEMM itself. Here dL/dw = dy^T h comes out in w's own layout.

    One client (a chunk of 1, what ``cohort_chunk: auto`` picks for the big models on a
    CPU) takes plain GEMMs: a batch of one ``bmm`` was ~1.4x slower than ``mm`` there.
    """

    @staticmethod
    def forward(ctx, h, w, b):
        ctx.save_for_backward(h, w)
        ctx.has_bias = b is not None
        if h.shape[0] == 1:
            out = h[0] @ w[0].t() if b is None else torch.addmm(b[0], h[0], w[0].t())
            return out.unsqueeze(0)
        if b is None:
            return torch.bmm(h, w.transpose(1, 2))
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, dy):
        h, w = ctx.saved_tensors
        db = dy.sum(1) if ctx.has_bias else None
        if h.shape[0] == 1:
            dh = (dy[0] @ w[0]).unsqueeze(0) if ctx.needs_input_grad[0] else None
            return dh, (dy[0].t() @ h[0]).unsqueeze(0), db
        dh = torch.bmm(dy, w) if ctx.needs_input_grad[0] else None
        dw = torch.bmm(dy.transpose(1, 2), h)
        return dh, dw, db


def _linear(w: torch.Tensor, b: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
    """Per-client linear layer, (C, B, in) -> (C, B, out)."""
    return _StackedLinear.apply(h, w, b)


class _Stacked:
    """Base: the module's parameter names and shapes, and the params by name."""

    def __init__(self, module: nn.Module) -> None:
        named = list(module.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]

    def by_name(self, params: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, params, strict=True))


def _fold(x: torch.Tensor, image: tuple[int, int, int]) -> torch.Tensor:
    """(C, B, features) rows -> (B, C * channels, H, W) images."""
    C, B = x.shape[:2]
    return x.reshape(C, B, *image).transpose(0, 1).reshape(B, C * image[0], *image[1:])


def _conv(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, **kw) -> torch.Tensor:
    """Per-client conv: h (B, C*I, H, W), w (C, O, I, k, k), b (C, O) -> (B, C*O, H', W')."""
    C = w.shape[0]
    return F.conv2d(h, w.flatten(0, 1), None if b is None else b.flatten(), groups=C, **kw)


class _InputConv(torch.autograd.Function):
    """The first conv, on the data: x (C, B, I, H, W) client-major, w (C, O, I, k, k),
    b (C, O) or None -> (B, C*O, H', W'); no gradient for x.

    The forward is the grouped conv of :func:`_conv`. Its weight gradient is not: on a
    CPU, oneDNN's grouped backward over a few input channels ran 2-3x slower than one
    ungrouped backward per client (the small CNN's 1->16 conv, 3 clients: 2.7 vs 1.3
    ms), so each client's comes from its own contiguous images, as in the loop.
    """

    @staticmethod
    def forward(ctx, x, w, b, stride, padding):
        ctx.save_for_backward(x, w)
        ctx.has_bias, ctx.stride, ctx.padding = b is not None, stride, padding
        return _conv(_fold(x, tuple(x.shape[2:])), w, b, stride=stride, padding=padding)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        C, out = w.shape[:2]
        B = dy.shape[0]
        dys = dy.reshape(B, C, out, *dy.shape[2:]).transpose(0, 1).contiguous()
        s, p = [ctx.stride] * 2, [ctx.padding] * 2
        grads = [torch.ops.aten.convolution_backward(
                     dys[c], x[c], w[c], [out] if ctx.has_bias else None, s, p, [1, 1],
                     False, [0, 0], 1, [False, True, ctx.has_bias])
                 for c in range(C)]  # fmt: skip
        dw = torch.stack([g[1] for g in grads])
        db = torch.stack([g[2] for g in grads]) if ctx.has_bias else None
        return None, dw, db, None, None


def _input_conv(
    x: torch.Tensor,
    image: tuple[int, int, int],
    w: torch.Tensor,
    b: torch.Tensor | None,
    stride: int = 1,
    padding: int = 0,
) -> torch.Tensor:
    """The first conv of (C, B, features) rows -> (B, C*O, H', W'): :class:`_InputConv`
    on a CPU cohort, :func:`_conv` of the folded images otherwise."""
    C, B = x.shape[:2]
    if C == 1 or x.device.type != "cpu" or x.requires_grad:
        return _conv(_fold(x, image), w, b, stride=stride, padding=padding)
    return _InputConv.apply(x.reshape(C, B, *image).contiguous(), w, b, stride, padding)


def _norm(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    """Per-client GroupNorm: ``groups`` per client, affine (C, O)."""
    return F.group_norm(h, w.shape[0] * groups, w.flatten(), b.flatten(), eps=1e-5)


def _unfold(h: torch.Tensor, C: int) -> torch.Tensor:
    """(B, C*O, ...) -> (C, B, O * ...) per-client flat features."""
    B = h.shape[0]
    return h.reshape(B, C, -1).transpose(0, 1)


def _head(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    if mask is not None:
        h = h * mask
    return _linear(w, b, h)


class CNNStacked(_Stacked):
    def __init__(self, module: CNN) -> None:
        super().__init__(module)
        self.image, self.groups = module.image, module.norm0.num_groups

    def forward(self, params, x, mask):
        p, C = self.by_name(params), x.shape[0]

        def norm_pool(h, i):  # = pool(relu(norm(h))): the ReLU on a quarter of the values
            return torch.relu(max_pool2(_norm(h, p[f"norm{i}.weight"], p[f"norm{i}.bias"],
                                              self.groups)))  # fmt: skip

        h = norm_pool(_input_conv(x, self.image, p["conv0.weight"], p["conv0.bias"], padding=1), 0)
        h = norm_pool(_conv(h, p["conv1.weight"], p["conv1.bias"], padding=1), 1)
        return _head(_unfold(h, C), p["fc.weight"], p["fc.bias"], mask)


class FemnistStacked(_Stacked):
    def __init__(self, module: FemnistCNN) -> None:
        super().__init__(module)
        self.image = module.image

    def forward(self, params, x, mask):
        p, C = self.by_name(params), x.shape[0]
        h = _input_conv(x, self.image, p["conv0.weight"], p["conv0.bias"], padding=2)
        h = torch.relu(max_pool2(h))
        h = torch.relu(max_pool2(_conv(h, p["conv1.weight"], p["conv1.bias"], padding=2)))
        h = torch.relu(_linear(p["fc.weight"], p["fc.bias"], _unfold(h, C)))
        return _head(h, p["head.weight"], p["head.bias"], mask)


class ResNetStacked(_Stacked):
    def __init__(self, module: ResNet) -> None:
        super().__init__(module)
        self.image, self.groups = module.image, module.norm.num_groups
        self.blocks = [(f"blocks.{i}.", blk.conv0.stride[0], blk.short is not None)
                       for i, blk in enumerate(module.blocks)]  # fmt: skip

    def forward(self, params, x, mask):
        p, C, g = self.by_name(params), x.shape[0], self.groups
        # NCHW, not channels-last: oneDNN's channels-last convs were ~1.1x faster on an
        # AVX-512 CPU but corrupted the heap on an AVX2 one (4-channel ResNet-8, 8x8 images)
        h = torch.relu(_norm(_input_conv(x, self.image, p["stem.weight"], None, padding=1),
                             p["norm.weight"], p["norm.bias"], g))  # fmt: skip
        for pre, stride, short in self.blocks:
            y = _conv(h, p[pre + "conv0.weight"], None, stride=stride, padding=1)
            y = torch.relu(_norm(y, p[pre + "norm0.weight"], p[pre + "norm0.bias"], g))
            y = _norm(_conv(y, p[pre + "conv1.weight"], None, padding=1),
                      p[pre + "norm1.weight"], p[pre + "norm1.bias"], g)  # fmt: skip
            if short:
                h = _norm(_conv(h, p[pre + "short.0.weight"], None, stride=stride),
                          p[pre + "short.1.weight"], p[pre + "short.1.bias"], g)  # fmt: skip
            h = F.relu(y + h)
        return _head(_unfold(h.mean((2, 3)), C), p["fc.weight"], p["fc.bias"], mask)


class CharLSTMStacked(_Stacked):
    def __init__(self, module: CharLSTM) -> None:
        super().__init__(module)
        self.layers = len(module.cells)

    def forward(self, params, x, mask):
        p = self.by_name(params)
        table = p["embed.weight"]  # (C, V, E)
        C, V = table.shape[:2]
        ids = x.long() + V * torch.arange(C, device=x.device).view(C, 1, 1)
        h = F.embedding(ids, table.flatten(0, 1))  # (C, B, T, E)
        for i in range(self.layers):
            h = self._layer(h, p[f"cells.{i}.weight_ih"], p[f"cells.{i}.weight_hh"],
                            p[f"cells.{i}.bias"])  # fmt: skip
        return _head(h[:, :, -1], p["head.weight"], p["head.bias"], mask)

    @staticmethod
    def _layer(x, w_ih, w_hh, bias):
        """x (C, B, T, in) -> (C, B, T, H); ``_LSTMLayer``'s equations per client."""
        C, B, T = x.shape[:3]
        gates_x = _linear(w_ih, bias, x.reshape(C, B * T, -1)).view(C, B, T, -1)
        return _Recurrence.apply(gates_x, w_hh)


class _Recurrence(torch.autograd.Function):
    """The LSTM recurrence of every client over the whole sequence, backward by hand.

    gates_x (C, B, T, 4H) (the input part of every step's gates, bias included), w_hh
    (C, 4H, H) -> hidden states (C, B, T, H); gates ordered i, f, z, o as ``nn.LSTM``.

    Autograd of the step-by-step graph computes dL/dw_hh as T small GEMMs of inner size
    B (one a step, each a pass over w_hh's size) and adds them up; here the steps'
    gate gradients are kept and dL/dw_hh is one GEMM of inner size B*T at the end, and
    the forward needs no graph: ~1.5x faster at the engine benchmark's sizes on a CPU.
    The same equations as the module's, summed in another order (round-off).
    """

    @staticmethod
    def forward(ctx, gates_x, w_hh):
        C, B, T, G = gates_x.shape
        H = G // 4
        # step-major, so each step's input part is one contiguous block (baddbmm copies it)
        steps = gates_x.permute(2, 0, 1, 3).contiguous()
        acts = gates_x.new_empty(T, C, B, G)  # sigmoid(i), sigmoid(f), tanh(z), sigmoid(o)
        tanh_c = gates_x.new_empty(T, C, B, H)
        cells = gates_x.new_empty(T, C, B, H)
        hs = gates_x.new_empty(T, C, B, H)
        h = c = gates_x.new_zeros(C, B, H)
        w_t = w_hh.transpose(1, 2)
        g = gates_x.new_empty(C, B, G)  # each step's pre-activation gates
        g_z = g[..., 2 * H : 3 * H]
        # every step's views made once (a Python loop of T steps: dispatches dominate)
        per_step = zip(steps.unbind(0), acts.unbind(0), acts[..., 2 * H : 3 * H].unbind(0),
                       *(v.unbind(0) for v in acts.chunk(4, dim=-1)),
                       cells.unbind(0), tanh_c.unbind(0), hs.unbind(0), strict=True)  # fmt: skip
        for gx, a, a_z, i, f, z, o, c_t, tc_t, h_t in per_step:
            torch.baddbmm(gx, h, w_t, out=g)  # gx_t + h_{t-1} W^T
            torch.sigmoid(g, out=a)
            torch.tanh(g_z, out=a_z)
            c = torch.addcmul(f * c, i, z, out=c_t)
            h = torch.mul(o, torch.tanh(c, out=tc_t), out=h_t)
        ctx.save_for_backward(w_hh, acts, tanh_c, cells, hs)
        return hs.permute(1, 2, 0, 3)

    @staticmethod
    def backward(ctx, d_out):
        w_hh, acts, tanh_c, cells, hs = ctx.saved_tensors
        T, C, B, G = acts.shape
        H = G // 4
        d_out = d_out.permute(2, 0, 1, 3).contiguous()  # (T, C, B, H)
        dgates = acts.new_empty(T, C, B, G)
        dh = torch.zeros_like(hs[0])
        dc = torch.zeros_like(hs[0])
        fused = acts.device.type == "cpu" and acts.dtype == torch.float32
        if fused:  # numpy views of the whole sequence, once: the kernel takes the step
            rows = C * B
            seq = [v.view(T, rows, -1).numpy() for v in (acts, tanh_c, cells, d_out, dgates)]
            dh_np, dc_np = dh.view(rows, H).numpy(), dc.view(rows, H).numpy()
        for t in range(T - 1, -1, -1):
            if fused:  # one compiled call for the step's elementwise backward
                step_backward(*seq[:4], dh_np, dc_np, seq[4], t)
                if t > 0:  # d h_{t-1}, into the kernel's buffer
                    torch.bmm(dgates[t], w_hh, out=dh)
                continue
            i, f, z, o = acts[t].chunk(4, dim=-1)
            tc = tanh_c[t]
            dh = dh + d_out[t]
            dc = torch.addcmul(dc, dh * o, 1 - tc * tc)
            di, df, dz, do = dgates[t].chunk(4, dim=-1)
            torch.mul(dc * z, i * (1 - i), out=di)
            if t > 0:
                torch.mul(dc * cells[t - 1], f * (1 - f), out=df)
            else:
                df.zero_()
            torch.mul(dc * i, 1 - z * z, out=dz)
            torch.mul(dh * tc, o * (1 - o), out=do)
            dc = dc * f
            if t > 0:
                dh = torch.bmm(dgates[t], w_hh)  # d h_{t-1}
        # dL/dw_hh = sum_t dg_t^T h_{t-1} (h_{-1} = 0): one GEMM over every step
        prev = hs[:-1].permute(1, 0, 2, 3).reshape(C, (T - 1) * B, H)
        dg = dgates[1:].permute(1, 0, 2, 3).reshape(C, (T - 1) * B, G)
        dw = torch.bmm(dg.transpose(1, 2), prev) if T > 1 else torch.zeros_like(w_hh)
        return dgates.permute(1, 2, 0, 3), dw


for _cls, _fast in ((CNN, CNNStacked), (FemnistCNN, FemnistStacked), (ResNet, ResNetStacked),
                    (CharLSTM, CharLSTMStacked)):  # fmt: skip
    register(_cls)(_fast)
