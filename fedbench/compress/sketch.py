"""Count sketches of updates, merged and unsketched on the server: FetchSGD
(Rothchild et al. 2020, ICML, "FetchSGD: Communication-Efficient Federated Learning with
Sketching", Alg. 1; count sketch of Charikar et al. 2002).

(Why one file of ~390 lines: the client encoder, the hardened decoder and the server's
merge / unsketch share the hash layout and its cache; split, each would re-derive it.)

A client sends ``S(x)``, a ``rows x cols`` table: with bucket hashes ``h_j: [n] -> [cols]``
and signs ``s_j: [n] -> {-1, +1}``, ``S[j, h_j(i)] += s_j(i) x_i``. The sketch is linear
(``S(a x + b y) = a S(x) + b S(y)``), so the server can sum sketches before unsketching.
``decode(msg)`` alone returns the count-sketch estimate ``x_i ~ median_j s_j(i) S[j, h_j(i)]``
(the single-message contract; biased by collisions).

Server side (:meth:`CountSketch.aggregate`, FetchSGD Alg. 1, lines 9-14), per tensor:

    S   = sum_c w_c S_c / sum_c w_c           merge (weighted, like FedAvg)
    S_u = rho S_u + S                          momentum, inside the sketch
    S_e = S_e + S_u                            error feedback, inside the sketch
    D   = top-k(U(S_e))                        unsketch the k heavy hitters
    S_u[nz S(D)] = 0;  S_e[nz S(D)] = 0        zero the buckets that D occupies

and the engine applies ``server_lr * D`` (the paper's ``eta`` sits outside: with a fixed
learning rate the two are the same). The paper's optional second round trip (clients
send the exact values at the k positions) is not implemented: D is the sketch estimate.

The hashes come from ``hash_seed`` (one config value, so every client of a run uses the
same ones and their sketches add); the seed travels in the message, so decode is
self-describing, and :meth:`CountSketch.aggregate` refuses sketches whose seeds, rows or
cols differ. A tensor with ``rows * cols >= n`` or ``cols < MIN_COLS`` (16) is sent dense
instead (the sketch would be no smaller, or would estimate nothing); the server then
applies its whole accumulated update for that tensor (it is exact).

Message layout, after ``wire.write_header(14, dtype, shape)``::

    rows   u8       1..32 (0: dense, then n x f32 values and nothing else)
    cols   u32      >= 16 (MIN_COLS), rows x cols < n
    seed   u64      hash seed
    table  rows x cols x f32, row-major

    len(msg) = header_size(ndim) + 13 + 4 rows cols     (sketch)
             = header_size(ndim) + 1 + 4 n              (dense)
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from fedbench.compress import ids, wire
from fedbench.compress.base import Compressor, check_batch
from fedbench.compress.finite import all_finite, require_finite
from fedbench.compress.selection import check_ratio_k, resolve_k, select_topk

MAX_ROWS = 32
# Fewer buckets a row than this estimate nothing (every value collides): such a tensor,
# like one the sketch would not shrink, is sent dense.
MIN_COLS = 16
_FIELDS = struct.Struct("<BIQ")


def decode_bytes(n: int, rows: int, dtype: torch.dtype) -> int:
    """Peak bytes of unsketching n values from ``rows`` rows: the hashes (9 bytes an
    entry, counted even when cached), the rows' estimates and the median's two
    temporaries (fp32), the fp32 signs of a row, and the output in ``dtype``. Encoders
    refuse what decoders would, so every message sent can be decoded under the cap."""
    median = 4 * rows * n + 12 * n if rows > _NETWORK_ROWS else 0  # torch.stack + median
    return 9 * rows * n + 4 * (rows + 3) * n + median + n * dtype.itemsize


# Hash tables kept for reuse, in entries all told (a model has few distinct tensor sizes;
# the oldest go first, so hostile messages cannot pile up memory here).
_CACHE_ENTRIES = 2**26
_cache: OrderedDict[tuple[int, int, int, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()


def _hashes_cpu(seed: int, n: int, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    key = (seed, n, rows, cols)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    g = torch.Generator().manual_seed(seed)
    # in place: no second (rows, n) int64 array at the peak (decode_bytes counts 9 bytes)
    slots = torch.randint(cols, (rows, n), generator=g, dtype=torch.int64)
    signs = torch.randint(2, (rows, n), generator=g, dtype=torch.int8).mul_(2).sub_(1)
    # flat index into a (rows * cols) table
    slots.add_(torch.arange(rows, dtype=torch.int64)[:, None] * cols)
    _cache[key] = (slots, signs)
    while sum(k[1] * k[2] for k in _cache) > _CACHE_ENTRIES:
        _cache.popitem(last=False)
    return slots, signs


def hashes(
    seed: int, n: int, rows: int, cols: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The count sketch's hash functions for n coordinates, from ``seed`` alone.

    Returns ``slots`` (rows, n) int64, the flat index ``j * cols + h_j(i)`` of coordinate
    i's bucket in row j, and ``signs`` (rows, n) int8 in {-1, +1}.
    """
    slots, signs = _hashes_cpu(int(seed), int(n), int(rows), int(cols))
    return slots.to(device), signs.to(device)


def sketch(x: torch.Tensor, slots: torch.Tensor, signs: torch.Tensor, cols: int) -> torch.Tensor:
    """Count sketches of the rows of ``x`` (clients, n): (clients, rows, cols) float32."""
    c, rows = x.shape[0], slots.shape[0]
    xf = x.to(torch.float32)
    table = torch.zeros(c, rows * cols, dtype=torch.float32, device=x.device)
    for j in range(rows):  # a row at a time: no (clients, rows, n) temporary
        table.scatter_add_(1, slots[j].expand(c, -1), xf * signs[j].to(torch.float32))
    return table.reshape(c, rows, cols)


def unsketch(table: torch.Tensor, slots: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Count-sketch estimates (clients, n) from tables (clients, rows, cols): the median
    over rows of ``s_j(i) S[j, h_j(i)]`` (the lower median when rows is even)."""
    c, rows, cols = table.shape
    flat = table.reshape(c, rows * cols)
    est = [
        flat.gather(1, slots[j].expand(c, -1)).mul_(signs[j].to(torch.float32)) for j in range(rows)
    ]
    return lower_median(est)


# Up to this many rows the median is a sorting network of elementwise min/max (rows^2 / 2
# compare-exchanges over n values), which beats torch.median's per-coordinate selection
# by less as rows grow: at 10^7 values, one thread, 3.1x at 3 rows, 1.8x at 5, 1.1x at 8.
# Above it, torch.median.
_NETWORK_ROWS = 7


def lower_median(values: list[torch.Tensor]) -> torch.Tensor:
    """Elementwise lower median of equally shaped tensors (``torch.median``'s choice for
    an even count: the smaller middle value); ``values`` may be overwritten."""
    r = len(values)
    if r == 1:
        return values[0]
    if r > _NETWORK_ROWS:
        return torch.stack(values).median(dim=0).values
    v = values  # replaced in place, so each input is freed once it is superseded
    for p in range(r):  # odd-even transposition sort: sorted after r passes
        for i in range(p % 2, r - 1, 2):
            v[i], v[i + 1] = torch.minimum(v[i], v[i + 1]), torch.maximum(v[i], v[i + 1])
    return v[(r - 1) // 2]


@dataclass
class SketchServerState:
    """The server's state for one tensor: momentum ``u`` and error ``e``, each a
    (rows, cols) sketch, or an (n,) vector for a tensor sent dense."""

    u: torch.Tensor
    e: torch.Tensor


@dataclass(frozen=True)
class _Parsed:
    header: wire.Header
    rows: int  # 0: dense
    cols: int
    seed: int
    data: np.ndarray  # rows * cols (or n) float32


class CountSketch(Compressor):
    """FetchSGD's count sketch (Rothchild et al. 2020): clients send ``rows x cols``
    sketches; the server merges them and keeps momentum and error feedback inside the
    sketch. See the module doc for the equations and the wire format."""

    name = "sketch"
    codec_id = ids.codec_id("sketch")
    family = ids.family("sketch")
    biased = True
    randomised = False  # the hashes come from hash_seed, not from a client's generator
    keeps_residual: ClassVar[bool] = True  # S_e on the server: refuse client-side EF in a run

    def __init__(
        self,
        rows: int = 5,
        cols: int | None = None,
        cols_ratio: float | None = 0.02,
        ratio: float | None = 0.01,
        k: int | None = None,
        momentum: float = 0.9,
        hash_seed: int = 0,
    ) -> None:
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= MAX_ROWS:
            raise ValueError(
                f"{self.name}: rows must be an integer in [1, {MAX_ROWS}], got {rows!r}"
            )
        if (cols is None) == (cols_ratio is None):
            raise ValueError(
                f"{self.name}: give exactly one of cols and cols_ratio (got cols={cols!r}, "
                f"cols_ratio={cols_ratio!r}); set the other to null"
            )
        if cols is not None and (isinstance(cols, bool) or not isinstance(cols, int) or cols < 1):
            raise ValueError(f"{self.name}: cols must be an integer >= 1, got {cols!r}")
        if cols_ratio is not None and not (
            isinstance(cols_ratio, int | float) and 0 < cols_ratio <= 1
        ):
            raise ValueError(f"{self.name}: cols_ratio must be in (0, 1], got {cols_ratio!r}")
        check_ratio_k(self.name, ratio, k)
        if not (isinstance(momentum, int | float) and 0 <= momentum < 1):
            raise ValueError(f"{self.name}: momentum must be in [0, 1), got {momentum!r}")
        if isinstance(hash_seed, bool) or not isinstance(hash_seed, int):
            raise ValueError(f"{self.name}: hash_seed must be an integer, got {hash_seed!r}")
        if not 0 <= hash_seed < 2**63:
            raise ValueError(f"{self.name}: hash_seed must be in [0, 2^63), got {hash_seed}")
        self.rows, self.cols, self.cols_ratio = rows, cols, cols_ratio
        self.ratio, self.k = ratio, k
        self.momentum = float(momentum)
        self.hash_seed = hash_seed

    def table_shape(self, n: int) -> tuple[int, int] | None:
        """(rows, cols) of the sketch of n values, or None when it is sent dense."""
        cols = self.cols if self.cols is not None else math.ceil(self.cols_ratio * n)
        return None if self.rows * cols >= n or cols < MIN_COLS else (self.rows, cols)

    # -- clients -------------------------------------------------------------------------
    def compress_batch(self, x, generators=None, states=None):
        """Sketch each row of ``x`` (clients, *shape); decoded = the count-sketch estimate."""
        return self._compress(x, generators, states, with_decoded=True)

    def encode_batch(self, x, generators=None, states=None):
        """The sketches alone: no unsketching (the median over rows costs more than the sketch)."""
        return self._compress(x, generators, states, with_decoded=False)[0]

    def _compress(self, x, generators, states, with_decoded: bool):
        check_batch(self, x, generators, states)
        require_finite(x, f"{self.name} input")
        c, shape = x.shape[0], tuple(x.shape[1:])
        n = math.prod(shape)
        header = wire.write_header(self.codec_id, x.dtype, shape)
        x2 = x.reshape(c, n).to(torch.float32)
        if not bool(torch.isfinite(x2).all()):
            raise ValueError(f"{self.name}: input overflows float32")
        ts = self.table_shape(n)
        if ts is None:
            data = x2.cpu().numpy()
            msgs = [header + bytes([0]) + data[i].tobytes() for i in range(c)]
            return msgs, x2.to(x.dtype).reshape(x.shape)
        rows, cols = ts
        if decode_bytes(n, rows, x.dtype) > wire.MAX_DECODE_BYTES:
            raise ValueError(
                f"{self.name}: unsketching {rows} rows for {n} values needs "
                f"{decode_bytes(n, rows, x.dtype)} bytes, more than the decode cap "
                f"of {wire.MAX_DECODE_BYTES} bytes; lower rows or raise FEDBENCH_MAX_DECODE_BYTES"
            )
        slots, signs = hashes(self.hash_seed, n, rows, cols, x.device)
        table = sketch(x2, slots, signs, cols)
        if not bool(torch.isfinite(table).all()):
            raise ValueError(f"{self.name}: sketch overflows float32")
        fields = _FIELDS.pack(rows, cols, self.hash_seed)
        data = table.reshape(c, -1).cpu().numpy()
        msgs = [header + fields + data[i].tobytes() for i in range(c)]
        if not with_decoded:
            return msgs, None
        decoded = unsketch(table, slots, signs).to(x.dtype).reshape(x.shape)
        return msgs, decoded

    # -- receivers -----------------------------------------------------------------------
    def _parse(self, msg: bytes) -> _Parsed:
        r = wire.Reader(msg, f"{self.name} message")
        h = r.header(self.codec_id)
        rows = r.u8("rows")
        if rows == 0:
            # the stacked values, a finiteness mask, the cast to the message dtype
            wire.check_decode_bytes(h.numel * (5 + h.dtype.itemsize), r.what)
            data = r.array("<f4", h.numel, "values")
            r.expect_end()
            return _Parsed(h, 0, 0, 0, data)
        if rows > MAX_ROWS:
            raise ValueError(f"corrupt {self.name} message: rows={rows} > {MAX_ROWS}")
        cols, seed = r.unpack("IQ", "cols and seed")
        if cols < MIN_COLS:
            raise ValueError(f"corrupt {self.name} message: cols={cols} < {MIN_COLS}")
        if rows * cols >= max(h.numel, 1):
            raise ValueError(
                f"corrupt {self.name} message: a {rows}x{cols} sketch of {h.numel} values "
                "(a sketch this large is sent dense)"
            )
        wire.check_decode_bytes(decode_bytes(h.numel, rows, h.dtype), r.what)
        data = r.array("<f4", rows * cols, "sketch table")
        r.expect_end()
        return _Parsed(h, rows, cols, seed, data)

    def _parse_all(self, msgs: Sequence[bytes]) -> tuple[list[_Parsed], torch.Tensor]:
        """Parse messages of one tensor; they must share shape, dtype and hashes."""
        if len(msgs) == 0:
            raise ValueError(f"{self.name}: needs at least one message")
        parsed = [self._parse(m) for m in msgs]
        p0 = parsed[0]
        for p in parsed[1:]:
            if p.header != p0.header:
                raise ValueError(f"{self.name}: messages in one batch differ in shape or dtype")
            if (p.rows, p.cols, p.seed) != (p0.rows, p0.cols, p0.seed):
                raise ValueError(
                    f"{self.name}: sketches cannot be merged: one is {p0.rows}x{p0.cols} with "
                    f"hash seed {p0.seed}, another {p.rows}x{p.cols} with hash seed {p.seed}; "
                    "every client of a round must use the same rows, cols and hash_seed"
                )
        data = torch.from_numpy(np.stack([p.data for p in parsed]))
        if not all_finite(data):
            raise ValueError(f"corrupt {self.name} message: non-finite values")
        return parsed, data

    def decode_batch(self, msgs, device=None):
        """Count-sketch estimates (clients, *shape) on ``device`` (dense rows: exact)."""
        parsed, data = self._parse_all(msgs)
        p0 = parsed[0]
        data = data.to(device)
        if p0.rows == 0:
            out = data
        else:
            slots, signs = hashes(p0.seed, p0.header.numel, p0.rows, p0.cols, data.device)
            out = unsketch(data.reshape(len(msgs), p0.rows, p0.cols), slots, signs)
        return out.to(p0.header.dtype).reshape(len(msgs), *p0.header.shape)

    # -- the server (FetchSGD) -----------------------------------------------------------
    def init_server_state(
        self,
        shape: Sequence[int],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> SketchServerState:
        """Zero momentum and error sketches for a tensor of ``shape``."""
        n = math.prod(tuple(shape))
        ts = self.table_shape(n)
        size = (n,) if ts is None else ts
        zeros = torch.zeros(size, dtype=torch.float32, device=device)
        return SketchServerState(u=zeros, e=zeros.clone())

    def aggregate(
        self,
        msgs: Sequence[bytes],
        weights: torch.Tensor,
        state: SketchServerState,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """The server's update for one tensor from the clients' sketches (FetchSGD Alg. 1).

        msgs: one message per client; weights: (clients,) >= 0, not all zero (FedAvg's
        sample counts). Updates ``state`` in place; returns D (*shape) in the messages'
        dtype, which the engine applies as ``w += server_lr * D``.
        """
        parsed, data = self._parse_all(msgs)
        p0 = parsed[0]
        dev = state.u.device if device is None else torch.device(device)
        w = torch.as_tensor(weights, dtype=torch.float32).to(dev).reshape(-1)
        if w.numel() != len(msgs) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(
                f"{self.name}: weights must be {len(msgs)} non-negative numbers, not all zero"
            )
        expect = (p0.header.numel,) if p0.rows == 0 else (p0.rows, p0.cols)
        if tuple(state.u.shape) != expect:
            raise ValueError(
                f"{self.name}: server state is {tuple(state.u.shape)}, messages are {expect}; "
                "the server and the clients must use the same rows and cols"
            )
        merged = torch.tensordot(w, data.to(dev), dims=1).reshape(expect) / w.sum()
        if not all_finite(merged):  # before the state is touched
            raise ValueError(f"corrupt {self.name} messages: their weighted sum overflows float32")
        state.u.mul_(self.momentum).add_(merged)
        state.e.add_(state.u)
        if p0.rows == 0:  # exact: apply all of it
            update = state.e.clone()
            state.u.zero_()
            state.e.zero_()
        else:
            n = p0.header.numel
            slots, signs = hashes(p0.seed, n, p0.rows, p0.cols, dev)
            est = unsketch(state.e[None], slots, signs)  # (1, n)
            idx = select_topk(est, resolve_k(self.ratio, self.k, n)).to(dev)[0]
            update = torch.zeros(n, dtype=torch.float32, device=dev)
            update[idx] = est[0, idx]
            # The buckets S(D) occupies: those of the non-zero coordinates sent.
            nz = idx[update[idx] != 0]
            occupied = slots[:, nz].reshape(-1)
            state.u.view(-1)[occupied] = 0
            state.e.view(-1)[occupied] = 0
        return update.to(p0.header.dtype).reshape(p0.header.shape)
