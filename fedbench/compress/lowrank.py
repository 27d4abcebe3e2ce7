"""Low-rank compressors: PowerSGD (Vogels et al. 2019) and truncated SVD (its bound).

(~300 lines: the two codecs share the factor framing, decoder and state; one file.)

A tensor of shape (n, m1, m2, ...) is viewed as the matrix M (n, m) with m = m1*m2*...
and sent as two factors, P (n, r) and Q (m, r), decoded as ``P @ Q.T``. Tensors where
that does not pay — 1-D tensors and scalars, or ``(n + m) r * min_compression_rate >= n m``
(the test of PyTorch's ``powerSGD_hook``) — are sent dense by the same codec.

Message layout, after ``wire.write_header(codec_id, x.dtype, shape)``::

    mode    u8    0 = dense, 1 = factors
    vdtype  u8    0 = fp32 values, 1 = fp16 values
    dense:   numel values                                 (row-major)
    factors: r u32, then P (n x r) and Q (m x r) values   (row-major)

    len(msg) = header_size(ndim) + 2 + numel * value_bytes                 (dense)
             = header_size(ndim) + 2 + 4 + (n + m) * r * value_bytes      (factors)
"""

from __future__ import annotations

import abc
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedbench.compress import ids, wire
from fedbench.compress.base import Compressor, check_batch
from fedbench.compress.finite import require_finite
from fedbench.compress.sparse import wire_value_dtype

_DENSE, _FACTORS = 0, 1


@dataclass
class PowerSGDState:
    """One client's warm start for one tensor: Q (m, r) of its previous call, or None."""

    q: torch.Tensor | None = None


_ALIGN_BYTES = 64


def _aligned(t: torch.Tensor) -> torch.Tensor:
    return t if t.data_ptr() % _ALIGN_BYTES == 0 else t.clone()


def matmul_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a[i] @ b[i]`` for each client i: (c, p, q) x (c, q, s) -> (c, p, s).

    A batch must give exactly the bytes of single calls, and on CPU MKL's results depend
    on more than the numbers: ``torch.bmm`` takes a batched kernel for some shapes, and
    ``sgemm`` rounds differently when an operand is not 64-byte aligned (a client's slice
    of a batch often is not). So: one ``torch.mm`` per client, every operand and output
    block 64-byte aligned (outputs padded per client, misaligned inputs copied). Each
    iteration is a full GEMM, so the loop's Python cost is negligible.
    """
    c, p, s = a.shape[0], a.shape[1], b.shape[2]
    if a.device.type != "cpu":
        return torch.bmm(a, b)
    floats = _ALIGN_BYTES // a.element_size()
    stride = -(-(p * s) // floats) * floats
    buf = torch.empty(c, stride, dtype=a.dtype, device=a.device)
    for i in range(c):
        torch.mm(_aligned(a[i]), _aligned(b[i]), out=buf[i, : p * s].view(p, s))
    return buf[:, : p * s].view(c, p, s)


def orthonormal_rows(p: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning each client's P: (c, n, r) -> (c, n, r).

    Householder QR (``torch.linalg.qr``): finite for rank-deficient and zero matrices,
    where Gram-Schmidt divides by zero. Per client on aligned copies on CPU, for the same
    reason as :func:`matmul_rows` (LAPACK's rounding depends on where a matrix sits).
    """
    if p.device.type != "cpu":
        return torch.linalg.qr(p).Q
    return torch.stack([torch.linalg.qr(_aligned(p[i])).Q for i in range(p.shape[0])])


def factors_decode_bytes(n: int, m: int, r: int, value_bytes: int, dtype: torch.dtype) -> int:
    """Peak bytes of decoding one factors message: the fp32 product ``P Q^T`` (n x m), its
    cast to ``dtype`` (or, in a batch, its contiguous copy), and the factors' copies."""
    return n * m * (4 + max(4, dtype.itemsize)) + (n + m) * r * (2 * value_bytes + 8)


class _LowRank(Compressor):
    biased = True

    def __init__(
        self, rank: int = 4, min_compression_rate: float = 2.0, value_dtype: str = "float32"
    ) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"{self.name}: rank must be an integer >= 1, got {rank!r}")
        if not isinstance(min_compression_rate, int | float) or min_compression_rate < 1:
            raise ValueError(
                f"{self.name}: min_compression_rate must be >= 1, got {min_compression_rate!r}"
            )
        self.rank = rank
        self.min_compression_rate = float(min_compression_rate)
        self.value_dtype = value_dtype
        self._wire = wire_value_dtype(self.name, value_dtype)

    def plan(self, shape: Sequence[int]) -> tuple[int, int, int] | None:
        """(n, m, r) if a tensor of ``shape`` is sent as factors, None if dense."""
        if len(shape) < 2:
            return None
        n, m = int(shape[0]), math.prod(int(s) for s in shape[1:])
        r = min(self.rank, n, m)
        if r == 0 or (n + m) * r * self.min_compression_rate >= n * m:
            return None
        return n, m, r

    @abc.abstractmethod
    def _factorize(self, M, r, gens, states) -> tuple[torch.Tensor, torch.Tensor]:
        """Factors P (rows, n, r) and Q (rows, m, r) with P Q^T approximating M."""

    def _checked(self, t: torch.Tensor) -> torch.Tensor:
        sent = t.to(self._wire)
        if not bool(torch.isfinite(sent).all()):
            raise ValueError(f"{self.name}: values overflow {self._wire}; use value_dtype=float32")
        return sent

    def compress_batch(self, x, generators=None, states=None):
        return self._compress(x, generators, states, with_decoded=True)

    def encode_batch(self, x, generators=None, states=None):
        """The messages alone: skips building the (clients, n, m) reconstruction."""
        return self._compress(x, generators, states, with_decoded=False)[0]

    def encode(self, x, generator=None, state=None):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{self.name}: expected a torch.Tensor, got {type(x).__name__}")
        return self.encode_batch(x.unsqueeze(0), [generator], [state])[0]

    def _compress(self, x, generators, states, *, with_decoded: bool):
        gens, sts = check_batch(self, x, generators, states)
        require_finite(x, f"{self.name} input")
        c, shape = x.shape[0], tuple(x.shape[1:])
        header = wire.write_header(self.codec_id, x.dtype, shape)
        vflag = 1 if self._wire == torch.float16 else 0
        plan = self.plan(shape)
        if plan is None:
            sent = self._checked(x.reshape(c, -1))
            rows = sent.cpu().numpy()
            head = header + bytes([_DENSE, vflag])
            return [head + rows[i].tobytes() for i in range(c)], sent.to(x.dtype).reshape(x.shape)
        n, m, r = plan
        M = x.reshape(c, n, m).to(torch.float32)
        P, Q = self._factorize(M, r, gens, sts)  # (c, n, r), (c, m, r)
        Ps, Qs = self._checked(P), self._checked(Q)
        Pn, Qn = Ps.cpu().numpy(), Qs.cpu().numpy()
        head = header + bytes([_FACTORS, vflag]) + struct.pack("<I", r)
        msgs = [head + Pn[i].tobytes() + Qn[i].tobytes() for i in range(c)]
        if not with_decoded:
            return msgs, None
        decoded = matmul_rows(Ps.to(torch.float32), Qs.to(torch.float32).mT)
        return msgs, decoded.to(x.dtype).contiguous().reshape(x.shape)

    def decode_batch(self, msgs, device=None):
        if len(msgs) == 0:
            raise ValueError(f"{self.name}: decode_batch needs at least one message")
        hdr, mode0, dense, Ps, Qs = None, None, [], [], []
        for msg in msgs:
            rd = wire.Reader(msg, f"{self.name} message")
            h = rd.header(self.codec_id)
            mode, vflag = rd.unpack("BB", "mode and value dtype")
            if mode not in (_DENSE, _FACTORS) or vflag not in (0, 1):
                raise ValueError(f"corrupt {self.name} message: mode {mode}, value dtype {vflag}")
            if hdr is not None and (h, mode) != (hdr, mode0):
                raise ValueError(f"{self.name}: messages in one batch differ in shape or mode")
            hdr, mode0 = h, mode
            np_dtype = "<f2" if vflag else "<f4"
            vbytes = 2 if vflag else 4
            if mode == _DENSE:
                # a copy of the values, their stack, the cast to the message dtype
                wire.check_decode_bytes(h.numel * (2 * vbytes + h.dtype.itemsize), rd.what)
                dense.append(torch.from_numpy(rd.array(np_dtype, h.numel, "values").copy()))
            else:
                if len(h.shape) < 2:
                    raise ValueError(f"corrupt {self.name} message: factors for a 1-D shape")
                n, m = h.shape[0], math.prod(h.shape[1:])
                r = rd.u32("rank")
                if not 1 <= r <= min(n, m):
                    raise ValueError(f"corrupt {self.name} message: rank {r} for a {n}x{m} matrix")
                wire.check_decode_bytes(factors_decode_bytes(n, m, r, vbytes, h.dtype), rd.what)
                P = rd.array(np_dtype, n * r, "P").reshape(n, r)
                Q = rd.array(np_dtype, m * r, "Q").reshape(m, r)
                Ps.append(torch.from_numpy(P.copy()))
                Qs.append(torch.from_numpy(Q.copy()))
                if Ps[0].shape != Ps[-1].shape or Ps[0].dtype != Ps[-1].dtype:
                    raise ValueError(f"{self.name}: messages in one batch differ in rank or dtype")
            rd.expect_end()
        if mode0 == _DENSE:
            if len({t.dtype for t in dense}) > 1:
                raise ValueError(f"{self.name}: messages in one batch differ in value dtype")
            vals = torch.stack(dense)
            parts = [vals]
        else:
            P = torch.stack(Ps).to(device=device, dtype=torch.float32)
            Q = torch.stack(Qs).to(device=device, dtype=torch.float32)
            parts = [P, Q]
        for t in parts:
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"corrupt {self.name} message: non-finite values")
        out = vals.to(device) if mode0 == _DENSE else matmul_rows(P, Q.mT)
        return out.to(hdr.dtype).contiguous().reshape(len(msgs), *hdr.shape)


def _initial_q(m: int, r: int, g: torch.Generator | None) -> torch.Tensor:
    """A Gaussian (m, r) start from ``g``, or from a fixed seed when there is no generator."""
    if g is None:
        g = torch.Generator().manual_seed(0)
    return torch.randn(m, r, generator=g, device=g.device)


class PowerSGD(_LowRank):
    """PowerSGD (Vogels et al. 2019, Alg. 1): ``P = orth(M Q); Q = M^T P``, decode ``P Q^T``.

    ``power_iterations`` repeats the two steps (more => closer to the best rank-r
    approximation, slower). The Q of each call is the next call's warm start; it lives in
    the caller's :class:`PowerSGDState` (one per client per tensor, from
    :meth:`init_state`). Without a state, Q starts from the generator each call (or from a
    fixed seed). Orthogonalisation is Householder QR (``torch.linalg.qr``), which stays
    finite for rank-deficient and zero matrices where Gram-Schmidt divides by zero.
    Biased (low-rank projection): use with error feedback, as the paper does.
    """

    name = "powersgd"
    codec_id = ids.codec_id("powersgd")
    family = ids.family("powersgd")
    randomised = True

    def __init__(
        self,
        rank: int = 4,
        power_iterations: int = 1,
        min_compression_rate: float = 2.0,
        value_dtype: str = "float32",
    ) -> None:
        super().__init__(rank, min_compression_rate, value_dtype)
        if isinstance(power_iterations, bool) or not isinstance(power_iterations, int):
            raise ValueError(
                f"powersgd: power_iterations must be an integer, got {power_iterations!r}"
            )
        if power_iterations < 1:
            raise ValueError(f"powersgd: power_iterations must be >= 1, got {power_iterations}")
        self.power_iterations = power_iterations

    def init_state(self, shape, *, dtype=torch.float32, device=None) -> PowerSGDState:
        return PowerSGDState(q=None)

    def _factorize(self, M, r, gens, states):
        m = M.shape[2]
        starts = []
        for g, st in zip(gens, states, strict=True):
            if st is not None and not isinstance(st, PowerSGDState):
                raise ValueError(
                    f"powersgd: state must come from init_state(), got {type(st).__name__}"
                )
            q = st.q if st is not None else None
            if q is not None and tuple(q.shape) != (m, r):
                raise ValueError(
                    f"powersgd: state holds Q of shape {tuple(q.shape)}, this tensor needs {(m, r)}; "
                    "use one state per client per tensor"
                )
            starts.append(q if q is not None else _initial_q(m, r, g))
        Q = torch.stack([q.to(device=M.device, dtype=torch.float32) for q in starts])
        for _ in range(self.power_iterations):
            P = orthonormal_rows(matmul_rows(M, Q))  # (c, n, r)
            # (P^T M)^T reads M row-major: ~2.5x faster than M^T P on CPU, same product.
            Q = matmul_rows(P.mT, M).mT  # (c, m, r)
        for st, q in zip(states, Q, strict=True):
            if st is not None:
                st.q = q.clone()
        return P, Q


class SVD(_LowRank):
    """Truncated SVD: the best rank-r approximation (Eckart & Young 1936), the bound
    PowerSGD approximates; error = sqrt(sum of the dropped squared singular values).
    Sends P = U_r S_r and Q = V_r in PowerSGD's layout. Deterministic, biased."""

    name = "svd"
    codec_id = ids.codec_id("svd")
    family = ids.family("svd")
    randomised = False

    def _factorize(self, M, r, gens, states):
        # One matrix at a time: batched LAPACK takes another code path whose last bits
        # differ, and a batch must give exactly the messages of single calls. SVD is the
        # slow reference here, not a fast path.
        P, Q = [], []
        for mat in M:
            U, S, Vh = torch.linalg.svd(_aligned(mat), full_matrices=False)
            P.append(U[:, :r] * S[:r])
            Q.append(Vh[:r].mT)
        return torch.stack(P), torch.stack(Q)
