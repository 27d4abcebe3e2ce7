"""signSGD with majority vote (Bernstein, Zhao, Azizzadenesheli, Anandkumar, ICLR 2019,
"signSGD with Majority Vote is Communication Efficient and Fault Tolerant", Alg. 1).

Uplink: each client sends the sign of its update, one bit a coordinate, plus one fp32
scale, its mean magnitude: exactly the :class:`~fedbench.compress.sign.Sign` message
(``header | scale f32 | sign bits``), so a message decodes alone to the scaled sign
and the contract suite applies unchanged. The scale costs 4 bytes a tensor and gives
the step a magnitude without a hand-tuned step size (the paper's ``eta``).

Server (:class:`MajorityVoteAggregator`): per coordinate, the vote
``v = sum_i a_i sign(D(c_i))``, with ``a_i = 1`` (the paper's vote: one client, one
vote; ``weighted=false``) or ``a_i = w_i`` (its sample count; ``weighted=true``). A
dropped client (weight 0) and a client whose update was all zero (scale 0) do not
vote. The step is

    step = s * sign(v),       sign(0) := +1 (one bit has no room for 0, as on the uplink)
    s = step_size,            or, when step_size is null, the voters' mean scale
                              (weighted like the vote)

so the server moves every coordinate by ``server_lr * s``. ``s`` is rounded to 8
significant bits (bfloat16's precision, a relative change below 0.2%): a step of one
magnitude with a short mantissa is exactly representable, so is the model change
``x_new - x_old`` it causes (while ``|x| < 2^15 s``), and the scaled-sign broadcast
(``downlink=sign``) then reproduces that change bit for bit in 1 bit a coordinate
(with ``server_momentum=0`` and a power-of-two ``server_lr``). A full fp32 magnitude
would not do: the sign codec's mean of ``d`` equal fp32 values is off by a few ulps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedbench.compress import ids
from fedbench.compress.sign import Sign


class MajorityVote(Sign):
    """Scaled-sign uplink whose server aggregates by majority vote (see the module)."""

    name = "majority_vote"
    biased = True
    randomised = False
    if "majority_vote" in ids.CODECS:
        codec_id = ids.codec_id("majority_vote")
        family = ids.family("majority_vote")
    else:  # until ids.CODECS has its row; then only the two lines above stay

        @property
        def codec_id(self) -> int:  # type: ignore[override]
            return 40

    def __init__(self, weighted: bool = False, step_size: float | None = None) -> None:
        if not isinstance(weighted, bool):
            raise ValueError(f"compressor.weighted={weighted!r} is invalid: must be true or false")
        if step_size is not None and (
            isinstance(step_size, bool)
            or not isinstance(step_size, int | float)
            or not 0 < step_size < float("inf")
        ):
            raise ValueError(
                f"compressor.step_size={step_size!r} is invalid: must be null or a number > 0"
            )
        self.weighted = weighted
        self.step_size = None if step_size is None else float(step_size)

    def server_aggregator(
        self, params: Sequence[torch.Tensor], num_clients: int
    ) -> MajorityVoteAggregator:
        """The server side: the vote (``num_clients`` is not needed: votes are per round)."""
        return MajorityVoteAggregator(params, weighted=self.weighted, step_size=self.step_size)


def short_mantissa(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to 8 significant bits (bfloat16's), back in x's dtype."""
    return x.to(torch.bfloat16).to(x.dtype)


class MajorityVoteAggregator:
    """The vote of one round, per tensor; ``fedbench.sim.aggregate``'s aggregator shape,
    in torch alone. ``add`` receives decoded messages (C, *shape): each is ``+-scale_i``."""

    decodes = True

    def __init__(
        self, params: Sequence[torch.Tensor], *, weighted: bool, step_size: float | None
    ) -> None:
        self.weighted = weighted
        self.step_size = step_size
        self.params = [(p.shape, p.dtype, p.device) for p in params]
        self._clear()

    def _clear(self) -> None:
        self.votes = [torch.zeros(s, dtype=torch.float32, device=d) for s, _, d in self.params]
        self.scale_sums = [0.0] * len(self.params)
        self.voters = [0.0] * len(self.params)  # sum of the voters' a_i

    def add(self, k: int, payload: torch.Tensor, weights: torch.Tensor, clients: Any) -> None:
        """Count tensor ``k``'s votes of a chunk: ``payload`` (C, *shape), ``weights`` (C,)."""
        if payload.shape[0] != weights.shape[0]:
            raise ValueError(
                f"majority vote: {payload.shape[0]} messages and {weights.shape[0]} weights"
            )
        flat = payload.reshape(payload.shape[0], -1).to(torch.float32)
        # every value of a message is +-scale, so the largest magnitude is the scale
        scale = flat.abs().amax(1) if flat.shape[1] else torch.zeros(flat.shape[0])
        w = weights.to(flat.device, torch.float32)
        a = w if self.weighted else torch.ones_like(w)
        a = a * ((w > 0) & (scale > 0))
        self.votes[k] += (a @ torch.sign(flat)).reshape(self.votes[k].shape)
        self.scale_sums[k] += float(a @ scale)
        self.voters[k] += float(a.sum())

    def result(self, total_weight: float) -> list[torch.Tensor]:
        """``s * sign(vote)`` per tensor (zero where no one voted); clears the round."""
        out = []
        for k, (shape, dtype, device) in enumerate(self.params):
            if self.voters[k] <= 0:
                out.append(torch.zeros(shape, dtype=dtype, device=device))
                continue
            s = (
                self.step_size
                if self.step_size is not None
                else self.scale_sums[k] / self.voters[k]
            )
            s = short_mantissa(torch.tensor(s, dtype=torch.float32, device=device))
            direction = torch.where(self.votes[k] >= 0, 1.0, -1.0)
            out.append((direction * s).to(dtype))
        self._clear()
        return out
