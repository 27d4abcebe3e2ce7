"""Adaptive compression: each client picks its codec setting to fit an upload budget.

The tutorial's exercise 1. The compressor group names a family (top-k, quant, PowerSGD,
QSGD); ``adaptive_choices`` lists values of its knob (``ratio``, ``bits``, ``rank`` or
``levels``). Client i, with uplink bandwidth ``b_i`` from the network model, uses the
finest setting whose upload fits ``upload_budget_s``::

    bytes_i(setting) * 8 / b_i <= upload_budget_s       (latency excluded: it is the
                                                          same whatever the codec sends)

The first guess comes from probe sizes (each setting's bytes for a random tensor of
every model shape); the real messages are then checked, and a client whose real upload
misses the budget is re-encoded one setting coarser, so every client either meets the
budget or uses the coarsest setting (counted as ``adaptive_over_budget``). Clients with
the same setting are encoded together through the codec's batched path. The bytes
counted are the chosen messages'. Per round the row gets ``adaptive_choices``, a
mapping ``setting -> clients``.

With ``error_feedback`` the residual is one per client and tensor, shared by every
setting (what a coarse setting drops is sent later by whichever setting comes next);
stateful codecs (PowerSGD's warm start) keep one state per setting.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedbench.compress import from_config as codec_from_config
from fedbench.sim import seeding
from fedbench.sim.uplink import Encode, Metrics, Sent

KNOBS = ("ratio", "bits", "rank", "levels")  # the first one the compressor config sets
# Default candidates per knob, finest (most bytes) first.
LADDERS: dict[str, list[Any]] = {
    "ratio": [0.3, 0.1, 0.03, 0.01, 0.003, 0.001],
    "bits": [16, 8, 4, 2, 1],
    "rank": [32, 16, 8, 4, 2, 1],
    "levels": [127, 31, 7, 3, 1],
}


def knob_of(comp: Mapping[str, Any]) -> str:
    """The knob the adaptive wrapper varies for compressor config ``comp``."""
    for knob in KNOBS:
        if comp.get(knob) is not None:
            return knob
    raise ValueError(
        f"upload_budget_s is set but compressor {comp.get('_target_')!r} has none of the "
        f"knobs {list(KNOBS)}: choose e.g. compressor=topk, quant or powersgd "
        "(or set upload_budget_s=null)"
    )


def validate(cfg: Mapping[str, Any]) -> None:
    """Check ``upload_budget_s`` and ``adaptive_choices`` (builds each candidate codec)."""
    budget, choices = cfg.get("upload_budget_s"), cfg.get("adaptive_choices")
    if budget is None:
        if choices is not None:
            raise ValueError(
                f"adaptive_choices={choices!r} is set but upload_budget_s is null: "
                "set upload_budget_s (seconds) or adaptive_choices=null"
            )
        return
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0:
        raise ValueError(
            f"upload_budget_s={budget!r} is invalid: must be null (off) or a number > 0"
        )
    if choices is not None and (
        isinstance(choices, str | bytes) or not isinstance(choices, Sequence) or not choices
    ):
        raise ValueError(f"adaptive_choices={choices!r} is invalid: must be null or a list")
    comp = cfg["compressor"]
    knob = knob_of(comp)
    for v in choices if choices is not None else LADDERS[knob]:
        try:
            codec_from_config({**comp, knob: v, "error_feedback": False})
        except ValueError as e:
            raise ValueError(f"adaptive_choices: {knob}={v!r} is invalid: {e}") from None


@dataclass
class AdaptiveState:
    """One client's state for one tensor: shared residual, one codec state per setting."""

    shape: tuple[int, ...]
    device: torch.device | str | None
    residual: torch.Tensor | None
    inner: dict[int, Any] = field(default_factory=dict)


class Adaptive:
    """Per-client codec settings under an upload-time budget (see the module docstring).

    The run's uplink codec stage: the engine asks it for per-client states
    (:meth:`init_state`), and its :meth:`uplink` hook replaces the single codec's stage
    (it encodes with the setting's own codec, so the ``encode`` it wraps is not called).
    """

    name = "adaptive"
    randomised = False  # generators are drawn here, per setting

    def __init__(
        self,
        comp: Mapping[str, Any],
        budget_s: float,
        choices: Sequence[Any] | None,
        network: Any,
        shapes: Sequence[tuple[int, ...]],
        *,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.knob = knob_of(comp)
        values = list(choices) if choices is not None else LADDERS[self.knob]
        self.error_feedback = bool(comp.get("error_feedback", False))
        codecs = [
            codec_from_config({**comp, self.knob: v, "error_feedback": False}) for v in values
        ]
        probe = [self._probe_bytes(c, shapes, seed) for c in codecs]
        order = sorted(range(len(values)), key=lambda j: -probe[j])  # finest first
        self.values = [values[j] for j in order]
        self.codecs = [codecs[j] for j in order]
        self.probe_bytes = np.array([probe[j] for j in order], dtype=np.int64)
        self.budget_s = float(budget_s)
        self.network = network
        self.seed = seed
        self.device = device

    @staticmethod
    def _probe_bytes(codec: Any, shapes: Sequence[tuple[int, ...]], seed: int) -> int:
        gen = torch.Generator().manual_seed(seed)
        total = 0
        for shape in shapes:
            x = torch.randn((1, *shape), generator=gen)
            gens = [torch.Generator().manual_seed(seed)] if codec.randomised else None
            state = codec.init_state(shape)
            total += len(codec.compress_batch(x, gens, [state])[0][0])
        return total

    def init_state(self, shape, *, dtype=torch.float32, device=None) -> AdaptiveState:
        """A client's state for one tensor of ``shape``."""
        residual = torch.zeros(tuple(shape), dtype=dtype, device=device)
        return AdaptiveState(tuple(shape), device, residual if self.error_feedback else None)

    def upload_seconds(self, clients: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        """Upload time of ``nbytes`` per client on its own uplink (no latency). # (C,)"""
        return self.network.upload_seconds(clients, nbytes)

    def choose(self, clients: np.ndarray) -> np.ndarray:
        """First guess per client: index into :attr:`values` of the finest setting whose
        probe size fits the budget, else the coarsest. # (C,) int"""
        budget = self.network.budget_bytes(clients, self.budget_s)  # (C,) float, inf if free
        fits = self.probe_bytes[None, :] <= budget[:, None]  # (C, settings)
        return np.where(fits.any(1), fits.argmax(1), len(self.values) - 1)

    def _inner(self, st: AdaptiveState, j: int) -> Any:
        if j not in st.inner:
            st.inner[j] = self.codecs[j].init_state(st.shape, device=st.device)
        return st.inner[j]

    def uplink(
        self,
        *,
        ids: np.ndarray,
        deltas: list[torch.Tensor],
        states: list[list[AdaptiveState]],
        round_: int,
        encode: Encode | None = None,
    ) -> tuple[Sent, Metrics]:
        """The uplink hook (``fedbench.sim.uplink``): encode row i of every tensor of
        ``deltas`` ((C, *shape) each) with client ``ids[i]``'s setting. Updates
        ``states`` (residuals, per-setting codec states). Metrics: ``adaptive_choices``
        (setting -> clients) and ``adaptive_over_budget``."""
        dev = deltas[0].device
        choice = self.choose(ids)
        msg_bytes = np.zeros(len(ids), dtype=np.int64)
        decoded = [torch.zeros_like(d) for d in deltas]
        enc_s = dec_s = 0.0
        last = len(self.values) - 1
        for j in range(len(self.values)):
            rows = np.flatnonzero(choice == j)
            if not len(rows):
                continue
            codec = self.codecs[j]
            idx = torch.from_numpy(rows).to(dev)
            inner_before = [
                [copy.deepcopy(s[k].inner.get(j)) for k in range(len(deltas))]
                for s in (states[i] for i in rows)
            ]
            nbytes = np.zeros(len(rows), dtype=np.int64)
            group_x, group_dec = [], []
            for k, d in enumerate(deltas):
                x = d[idx]
                sts = [states[i][k] for i in rows]
                if self.error_feedback:
                    x = x + torch.stack([s.residual for s in sts])
                gens = (
                    [
                        seeding.generator(dev, self.seed, round_, seeding.COMPRESS, int(ids[i]), k)
                        for i in rows
                    ]
                    if codec.randomised
                    else None
                )
                t0 = time.perf_counter()
                msgs, _ = codec.compress_batch(x, gens, [self._inner(s, j) for s in sts])
                t1 = time.perf_counter()
                group_dec.append(codec.decode_batch(msgs, dev))
                dec_s += time.perf_counter() - t1
                enc_s += t1 - t0
                group_x.append(x)
                nbytes += np.fromiter((len(m) for m in msgs), dtype=np.int64, count=len(msgs))
            late = (self.upload_seconds(ids[rows], nbytes) > self.budget_s) & (j < last)
            for r in np.flatnonzero(late):  # too big after all: retry one setting coarser
                choice[rows[r]] = j + 1
                for k in range(len(deltas)):
                    if inner_before[r][k] is None:
                        states[rows[r]][k].inner.pop(j, None)
                    else:
                        states[rows[r]][k].inner[j] = inner_before[r][k]
            ok = ~late
            ok_idx = torch.from_numpy(rows[ok]).to(dev)
            sel = torch.from_numpy(np.flatnonzero(ok)).to(dev)
            msg_bytes[rows[ok]] = nbytes[ok]
            for k in range(len(deltas)):
                decoded[k][ok_idx] = group_dec[k][sel]
                if self.error_feedback:
                    new_residual = group_x[k][sel] - group_dec[k][sel]
                    for n, i in enumerate(rows[ok]):
                        states[i][k].residual = new_residual[n]
        counts: dict[str, int] = {}
        for j, n in zip(*np.unique(choice, return_counts=True), strict=True):
            key = str(self.values[int(j)])
            counts[key] = counts.get(key, 0) + int(n)
        over = self.upload_seconds(ids, msg_bytes) > self.budget_s
        metrics = {"adaptive_choices": counts, "adaptive_over_budget": int(over.sum())}
        return Sent(msg_bytes, decoded, enc_s, dec_s), metrics


def from_config(cfg: Mapping[str, Any], sim: Any) -> Adaptive | None:  # sim: a Federation
    """The run's :class:`Adaptive` (None when ``upload_budget_s`` is null)."""
    if cfg.get("upload_budget_s") is None:
        return None
    return Adaptive(
        cfg["compressor"],
        float(cfg["upload_budget_s"]),
        cfg.get("adaptive_choices"),
        sim.network,
        [tuple(p.shape) for p in sim.params],
        seed=sim.seed,
        device=sim.device,
    )
