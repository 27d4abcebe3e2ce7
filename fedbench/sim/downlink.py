"""The broadcast: the server sends the compressed *change* of its model, never the model
through a lossy codec (DoubleSqueeze, Tang et al. 2019; EF21-P, Gruntkowska et al. 2023).

The server keeps, beside its model ``x``, the model the clients hold, ``h`` (the
*reference*). Each broadcast encodes, per tensor, the change the clients have not seen:

- ``downlink_error_feedback=false``: ``C(x - x_prev)``, the server's model change since
  the previous broadcast; what the codec drops is lost, so ``h`` drifts from ``x``;
- ``downlink_error_feedback=true``: ``C(x - h)``, the change plus everything earlier
  messages dropped (server-side error feedback; ``x - h`` is the residual).

Both sides apply the decoded change: ``h <- h + D(msg)``; clients train from ``h`` and
their updates are applied to ``x``. Where a tensor's change message would be no smaller
than the tensor itself sent dense (``compressor=none``, or a tiny bias vector), the tensor
is sent dense and ``h = x`` exactly, so a dense downlink gives the numbers of sending
the model.

A client that sat out rounds catches up: per tensor it receives the messages it missed
or the dense tensor, whichever is fewer bytes; a client never seen before receives the
dense model. Those are the bytes counted (per client).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedbench.compress import Compressor, build, from_config, wire
from fedbench.sim import seeding

NEVER = -1  # held version of a client that holds no model yet


def codec(spec: str | Mapping[str, Any]) -> Compressor:
    """The downlink codec: a compressor name (``conf/compressor/<name>.yaml``) or a full
    compressor config (``_target_`` + keywords, a user's codec included).

    Built without the error-feedback wrapper: error feedback on the downlink is the
    reference mechanism above (``downlink_error_feedback``), not a per-codec residual.
    """
    if isinstance(spec, str):
        c = build(spec, error_feedback=False)
    elif isinstance(spec, Mapping):
        if spec.get("error_feedback"):
            raise ValueError(
                "downlink.error_feedback=true is invalid: server-side error feedback on the "
                "broadcast is downlink_error_feedback=true"
            )
        c = from_config({**spec, "error_feedback": False})
    else:
        raise ValueError(
            f"downlink={spec!r} is invalid: must be a compressor name or a compressor config"
        )
    if callable(getattr(c, "aggregate", None)) or getattr(c, "keeps_residual", False):
        raise ValueError(
            f"downlink codec {type(c).__name__} is invalid for the broadcast: it "
            + (
                "merges client messages on the server (an uplink-only codec)"
                if callable(getattr(c, "aggregate", None))
                else "keeps a client-side residual and momentum of its own (an uplink scheme)"
            )
        )
    return c


class Broadcast:
    """The server's side of the downlink: reference model, codec states, client versions.

    ``params`` is the server's model (its tensors are read, never written).
    """

    def __init__(
        self,
        spec: str | Mapping[str, Any],
        params: Sequence[torch.Tensor],
        num_clients: int,
        *,
        error_feedback: bool,
        seed: int,
    ) -> None:
        self.codec = codec(spec)
        self.error_feedback = error_feedback
        self.seed = seed
        self.device = params[0].device
        self.reference = [p.detach().clone() for p in params]  # h: what the clients hold
        # x at the last broadcast: the base of the change without error feedback (with it,
        # the base is the reference)
        self.sent = None if error_feedback else [p.detach().clone() for p in params]
        self.states = [self.codec.init_state(p.shape, device=self.device) for p in params]
        # Dense message per tensor: what `none` sends (header + fp32 values).
        self.dense = np.array(
            [wire.header_size(p.dim()) + 4 * math.prod(p.shape) for p in params], np.int64
        )
        # cum[v, k]: bytes of tensor k's messages up to version v (version 0 = the start).
        self.cum = np.zeros((1, len(params)), dtype=np.int64)
        self.version = 0
        self.changed = True  # the server model moved since the last broadcast
        self.held = np.full(num_clients, NEVER, dtype=np.int64)

    def model_changed(self) -> None:
        """The server applied a step: the next broadcast carries a new change."""
        self.changed = True

    def _encode(self, params: Sequence[torch.Tensor], tag: int) -> np.ndarray:
        """One new version: encode each tensor's change, update ``h``; bytes per tensor."""
        sizes = np.zeros(len(params), dtype=np.int64)
        for k, x in enumerate(params):
            base = self.reference[k] if self.error_feedback else self.sent[k]
            gen = (
                seeding.generator(self.device, self.seed, tag, seeding.DOWNLINK, k)
                if self.codec.randomised
                else None
            )
            msgs, decoded = self.codec.compress_batch(
                (x - base).unsqueeze(0), [gen], [self.states[k]]
            )
            if len(msgs[0]) >= self.dense[k]:  # the tensor itself is no dearer: exact
                self.reference[k] = x.detach().clone()
                sizes[k] = self.dense[k]
            else:
                self.reference[k] = self.reference[k] + decoded[0]
                sizes[k] = len(msgs[0])
            if self.sent is not None:
                self.sent[k] = x.detach().clone()
        return sizes

    def __call__(
        self, params: Sequence[torch.Tensor], clients: np.ndarray, tag: int
    ) -> tuple[list[torch.Tensor], np.ndarray, float]:
        """Bring ``clients`` up to date with the server model ``params``.

        Returns (the model they now hold per tensor, bytes each client received (C,),
        codec seconds). ``tag`` (round or launch) keys a randomised codec's draws.
        Raises ValueError when the codec refuses the change (non-finite values).
        """
        t0 = time.perf_counter()
        if self.changed:
            sizes = self._encode(params, tag)
            self.cum = np.vstack([self.cum, self.cum[-1] + sizes])
            self.version += 1
            self.changed = False
        held = self.held[clients]
        missed = self.cum[-1][None, :] - self.cum[np.maximum(held, 0)]  # (C, tensors)
        per_tensor = np.minimum(missed, self.dense[None, :])
        per_tensor[held == NEVER] = self.dense
        self.held[clients] = self.version
        return self.reference, per_tensor.sum(1), time.perf_counter() - t0
