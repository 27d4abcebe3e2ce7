"""EF21 error feedback around any compressor, with the server state it needs.

Richtárik, Sokolov, Fatkhullin 2021, "EF21: A New, Simpler, Theoretically Better, and
Practically Faster Error Feedback" (Alg. 1); partial participation as EF21-PP in
Fatkhullin et al. 2021, "EF21 with Bells & Whistles" (Alg. "EF21-PP"); weights as in
EF21-W (Richtárik, Gasanov, Burlachenko 2024, "Error Feedback Reloaded").

Client i keeps ``g_i`` (zero at the start), the server's estimate of its update. In a
round it takes part in, it sends ``c_i = C(update_i - g_i)`` and both sides apply
``g_i <- g_i + D(c_i)``. A client that sits out keeps its stale ``g_i`` (EF21-PP). The
server's step is the weighted mean of every ``g_i``::

    g = sum_i w_i g_i / sum_i w_i            (w_i: client i's samples)

The server never stores a ``g_i``: ``g_i`` changes only by ``D(c_i)``, so it keeps the
running sum ``S = sum_i w_i g_i`` (``S += w_i D(c_i)`` per message, one model-sized fp64
tensor per tensor) and each client's weight: memory = the model + ``num_clients``
numbers, not ``num_clients`` models.

Which clients the mean runs over: EF21-PP averages over all ``n`` clients with
``1/n``, and with ``g_i = 0`` at the start an unseen client counts as a zero. Here the
sum runs over the clients seen so far (each one's weight counted from its first
arrival): that is EF21-PP with ``g_i`` initialised at first contact, the same algorithm
once every client has taken part, without early steps shrunk by the share of the
federation not yet seen. With every client in every round and an identity codec, ``g``
is FedAvg's weighted mean of the updates (``tests/sim/test_ef21_sim.py``). A message
with weight 0 (a client dropped by a deadline, whose state the engine restores) is not
applied. A client's weight must not change between its messages: ``S`` would no longer
be ``sum_i w_i g_i``.

The wire format is the inner codec's, unchanged; the difference from the residual
wrapper (:class:`~fedbench.compress.base.ErrorFeedback`: send ``C(x + e)``, keep
``e``) is what the server applies: EF sums what arrived, EF21 steps by the mean of the
``g_i``, which it updates from what arrived.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from fedbench.compress.base import Compressor, ErrorFeedback, _Wrapper, check_batch


@dataclass
class EF21State:
    """One client's EF21 state: ``g`` (its last estimate, the tensor's shape) and the
    inner codec's state."""

    g: torch.Tensor
    inner: Any


class EF21(_Wrapper):
    """EF21 around ``inner`` (a compressor, or a compressor config to build one from).

    ``compress_batch`` sends ``C(x - g)`` and adds the decoded message to ``g``; the
    server side is :meth:`server_aggregator` (:class:`EF21Mean`).
    """

    # The server keeps state built from every message, so a plug-in that skips,
    # re-encodes or reweights messages (lazy uploads, adaptive codecs, FedBuff) breaks
    # it: fedbench.sim.aggregate.check_run refuses those.
    server_state: ClassVar[bool] = True

    prefix = "ef21"

    @property
    def codec_id(self) -> int:  # type: ignore[override]
        return self.inner.codec_id

    def __init__(self, inner: Compressor | Mapping[str, Any]) -> None:
        if isinstance(inner, Mapping):
            if inner.get("error_feedback"):
                raise ValueError(
                    "EF21's inner compressor has error_feedback set: EF21 is the error "
                    "feedback; set the inner error_feedback=false"
                )
            from fedbench.compress import from_config

            inner = from_config({**inner, "error_feedback": False})
        if not isinstance(inner, Compressor):
            raise ValueError(
                f"EF21 needs a Compressor or a compressor config, got {type(inner).__name__}"
            )
        if isinstance(inner, ErrorFeedback | EF21):
            raise ValueError(
                f"EF21 around {type(inner).__name__}: error feedback is already applied; "
                "do not wrap twice"
            )
        for attr, why in (
            ("keeps_residual", "it keeps its own residual"),
            ("aggregate", "it merges messages on the server"),
            ("server_aggregator", "it aggregates on the server itself"),
        ):
            if getattr(inner, attr, None):
                raise ValueError(
                    f"compressor.error_feedback=ef21 is invalid for {type(inner).__name__}: "
                    f"{why}; set compressor.error_feedback=false"
                )
        self.inner = inner

    def init_state(self, shape, *, dtype=torch.float32, device=None) -> EF21State:
        return EF21State(
            g=torch.zeros(tuple(shape), dtype=dtype, device=device),
            inner=self.inner.init_state(shape, dtype=dtype, device=device),
        )

    def compress_batch(self, x, generators=None, states=None):
        """Send ``C(x_i - g_i)`` per row and update ``g_i += D(c_i)`` in the states."""
        gens, sts = check_batch(self, x, generators, states)
        if any(not isinstance(s, EF21State) for s in sts):
            raise ValueError(
                "EF21 needs a state per client: call init_state() once per client and pass "
                "it on every call"
            )
        g = torch.stack([s.g for s in sts]) if sts else torch.zeros_like(x)
        msgs, decoded = self.inner.compress_batch(x - g, gens, [s.inner for s in sts])
        new_g = g + decoded
        for i, s in enumerate(sts):
            s.g = new_g[i]
        return msgs, decoded

    def server_aggregator(self, params: Sequence[torch.Tensor], num_clients: int) -> EF21Mean:
        """The server side: the running weighted sum of every client's ``g_i``."""
        return EF21Mean(params, num_clients)

    def __repr__(self) -> str:
        return f"EF21({self.inner!r})"


class EF21Mean:
    """EF21-PP's server: ``S = sum_i w_i g_i`` per tensor and the clients' weights.

    An aggregator in ``fedbench.sim.aggregate``'s sense (``decodes``, ``add``,
    ``result``), kept beside the codec and written in torch alone (the compress layer
    does not import the simulation). ``add`` receives the decoded messages ``D(c_i)``;
    ``result`` is ``S / sum of the seen clients' weights`` and keeps ``S``: it is the
    run's state, not the round's.
    """

    decodes = True

    def __init__(self, params: Sequence[torch.Tensor], num_clients: int) -> None:
        if num_clients < 1:
            raise ValueError(f"num_clients={num_clients!r} is invalid: must be >= 1")
        self.sums = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        self.dtypes = [p.dtype for p in params]
        # weight[c]: client c's weight from its first arrival; 0 = not seen yet
        self.weight = torch.zeros(num_clients, dtype=torch.float64)

    def add(self, k: int, payload: torch.Tensor, weights: torch.Tensor, clients: Any) -> None:
        """Apply tensor ``k``'s decoded corrections ``payload`` (C, *shape) of ``clients``
        (C,) with ``weights`` (C,); weight 0 (a dropped client) applies nothing."""
        ids = torch.as_tensor(np.asarray(clients), dtype=torch.int64)
        w = weights.detach().to("cpu", torch.float64)
        if ids.shape != w.shape or payload.shape[0] != len(ids):
            raise ValueError(
                f"EF21: {len(ids)} clients, {w.numel()} weights, {payload.shape[0]} messages"
            )
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= len(self.weight)):
            raise ValueError(f"EF21: client id outside 0..{len(self.weight) - 1}")
        live = w > 0
        held = self.weight[ids]
        changed = live & (held > 0) & (held != w)
        if bool(changed.any()):
            c = int(ids[changed][0])
            raise ValueError(
                f"EF21: client {c}'s weight changed from {float(self.weight[c])} to "
                f"{float(w[changed][0])}: the server's sum of w_i g_i needs fixed weights"
            )
        self.weight[ids[live]] = w[live]
        wd = w.to(payload.device)
        self.sums[k] += torch.tensordot(wd, payload.to(torch.float64), dims=1)

    def result(self, total_weight: float) -> list[torch.Tensor]:
        """The step per tensor: ``g = S / sum of seen weights`` (``total_weight``, the
        round's arrivals, is not the denominator: stale ``g_i`` count too)."""
        seen = float(self.weight.sum())
        if seen <= 0:
            return [
                torch.zeros_like(s, dtype=dt) for s, dt in zip(self.sums, self.dtypes, strict=True)
            ]
        return [(s / seen).to(dt) for s, dt in zip(self.sums, self.dtypes, strict=True)]
