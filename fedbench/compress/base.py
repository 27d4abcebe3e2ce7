"""The compressor contract, and error feedback as a wrapper around any compressor.

A compressor is a codec: ``encode(x) -> bytes`` is the exact wire message for one
tensor and ``decode(bytes) -> Tensor`` gives it back (same shape, same dtype). The
batched path compresses a whole cohort ``(clients, *shape)`` in one vectorised call
and yields one message per client; it agrees with the single-tensor path exactly.

Subclasses implement two methods, :meth:`Compressor.compress_batch` and
:meth:`Compressor.decode_batch`; everything else derives from them.

State that outlives a call (error-feedback residuals, PowerSGD's warm-start factors)
lives in per-client objects made by :meth:`Compressor.init_state` and owned by the
caller, so one compressor instance serves every client. ``compress_batch`` updates the
states it is given in place.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

Generators = Sequence[torch.Generator | None] | None
States = Sequence[Any] | None


class Compressor(abc.ABC):
    """Base of every codec. One instance is stateless and serves every client."""

    name: ClassVar[str] = "abstract"
    codec_id: ClassVar[int] = 0
    biased: ClassVar[bool] = True  # False where E[decode(encode(x))] == x (proved in tests)
    randomised: ClassVar[bool] = False

    # -- to implement -------------------------------------------------------------------
    @abc.abstractmethod
    def compress_batch(
        self, x: torch.Tensor, generators: Generators = None, states: States = None
    ) -> tuple[list[bytes], torch.Tensor]:
        """Encode each row of ``x`` (clients, *shape).

        Returns the messages (one per client) and what the receiver will decode from
        them, (clients, *shape) in ``x.dtype`` on ``x.device``. ``generators[i]`` is the
        only randomness client i's message may draw from; ``states[i]`` is client i's
        state from :meth:`init_state`, updated in place.
        """

    @abc.abstractmethod
    def decode_batch(
        self, msgs: Sequence[bytes], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Decode messages of one shape into (clients, *shape) on ``device``.

        Untrusted input: anything malformed raises ValueError.
        """

    # -- derived --------------------------------------------------------------------------
    def init_state(
        self,
        shape: Sequence[int],
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Any:
        """Per-client state for a tensor of ``shape``; None for stateless codecs."""
        return None

    def encode(
        self, x: torch.Tensor, generator: torch.Generator | None = None, state: Any = None
    ) -> bytes:
        """The wire message for one tensor of any shape."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{self.name}: expected a torch.Tensor, got {type(x).__name__}")
        return self.encode_batch(x.unsqueeze(0), [generator], [state])[0]

    def compress(
        self, x: torch.Tensor, generator: torch.Generator | None = None, state: Any = None
    ) -> tuple[bytes, torch.Tensor]:
        """``(encode(x), decode(encode(x)))`` without parsing the message back."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{self.name}: expected a torch.Tensor, got {type(x).__name__}")
        msgs, decoded = self.compress_batch(x.unsqueeze(0), [generator], [state])
        return msgs[0], decoded[0]

    def decode(self, msg: bytes, device: torch.device | str | None = None) -> torch.Tensor:
        return self.decode_batch([msg], device)[0]

    def encode_batch(
        self, x: torch.Tensor, generators: Generators = None, states: States = None
    ) -> list[bytes]:
        """The messages alone; codecs override it to skip building the decoded tensor."""
        return self.compress_batch(x, generators, states)[0]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def check_batch(
    c: Compressor, x: torch.Tensor, generators: Generators, states: States
) -> tuple[list[torch.Generator | None], list[Any]]:
    """Validate a batched call's arguments; returns per-client generator and state lists."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{c.name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"{c.name}: a batch needs a leading clients dimension, got a scalar")
    if not x.is_floating_point():
        raise ValueError(f"{c.name}: expected a floating-point tensor, got {x.dtype}")
    n = x.shape[0]
    gens = list(generators) if generators is not None else [None] * n
    sts = list(states) if states is not None else [None] * n
    if len(gens) != n:
        raise ValueError(f"{c.name}: {len(gens)} generators for {n} clients")
    if len(sts) != n:
        raise ValueError(f"{c.name}: {len(sts)} states for {n} clients")
    return gens, sts


def rand_like_rows(
    shape: Sequence[int],
    generators: Sequence[torch.Generator | None],
    device: torch.device | str | None,
) -> torch.Tensor:
    """Uniform [0, 1) noise (clients, *shape), row i drawn from ``generators[i]`` alone.

    Row i equals ``torch.rand(shape, generator=generators[i])``, so a batched call and a
    single call with the same generator draw the same numbers.
    """
    return torch.stack([torch.rand(tuple(shape), generator=g, device=device) for g in generators])


@dataclass
class EFState:
    """Error-feedback state of one client: the residual and the inner codec's state."""

    residual: torch.Tensor | None
    inner: Any


class ErrorFeedback(Compressor):
    """Error feedback around any compressor (Karimireddy et al. 2019, Alg. 2; Seide 2014).

    The message encodes ``x + e`` and the residual becomes
    ``e <- (x + e) - decode(encode(x + e))``, so what a biased compressor drops is sent
    later instead of lost. The wire format is the inner codec's, unchanged.
    """

    def __init__(self, inner: Compressor) -> None:
        if isinstance(inner, ErrorFeedback):
            raise ValueError("error feedback is already applied; do not wrap twice")
        self.inner = inner

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"ef-{self.inner.name}"

    @property
    def codec_id(self) -> int:  # type: ignore[override]
        return self.inner.codec_id

    @property
    def biased(self) -> bool:  # type: ignore[override]
        return self.inner.biased

    @property
    def randomised(self) -> bool:  # type: ignore[override]
        return self.inner.randomised

    def init_state(self, shape, *, dtype=torch.float32, device=None) -> EFState:
        return EFState(
            residual=torch.zeros(tuple(shape), dtype=dtype, device=device),
            inner=self.inner.init_state(shape, dtype=dtype, device=device),
        )

    def compress_batch(self, x, generators=None, states=None):
        gens, sts = check_batch(self, x, generators, states)
        if any(s is None for s in sts):
            raise ValueError(
                "error feedback needs a state per client: call init_state() once per client "
                "and pass it on every call"
            )
        residual = torch.stack([s.residual for s in sts])
        corrected = x + residual
        msgs, decoded = self.inner.compress_batch(corrected, gens, [s.inner for s in sts])
        new_residual = corrected - decoded
        for i, s in enumerate(sts):
            s.residual = new_residual[i]
        return msgs, decoded

    def decode_batch(self, msgs, device=None):
        return self.inner.decode_batch(msgs, device)

    def __repr__(self) -> str:
        return f"ErrorFeedback({self.inner!r})"
