"""The compressor contract, and error feedback as a wrapper around any compressor.

A compressor is a codec: ``encode(x) -> bytes`` is the exact wire message for one
tensor and ``decode(bytes) -> Tensor`` gives it back (same shape, same dtype). The
batched path compresses a whole cohort ``(clients, *shape)`` in one vectorised call
and yields one message per client; it agrees with the single-tensor path exactly.

A subclass implements EITHER pair, and the base class derives the rest:

- ``encode(x, generator, state) -> bytes`` and ``decode(msg) -> Tensor`` of one tensor:
  the simplest codec; the batched methods loop over the clients; or
- ``compress_batch`` and ``decode_batch``: the vectorised fast path of the built-in
  codecs; ``encode``/``decode`` are its one-row case.

(Mixing, e.g. ``compress_batch`` with ``decode``, works too.) A class that provides
neither encoder or neither decoder is refused when it is instantiated, with a
ValueError naming what is missing. Every subclass's own ``decode_batch`` and ``decode``
is wrapped (in :meth:`Compressor.__init_subclass__`) by one shared check that its
result is finite: a well-formed but hostile message (a scale near the top of fp32, a
dtype byte changed to fp16 under large values, factors whose product overflows) raises
``ValueError``, as a non-finite input to ``encode`` does. The check is one vectorised
sum over the output (:func:`finite.all_finite`), ~0.5x the cost of a clone.

Identity: ``codec_id`` (the header's codec byte) and ``family`` come from the table in
:mod:`fedbench.compress.ids`, which also says how a user codec picks its id (128..255,
checked at class creation).

(~310 lines: the contract, its two default paths and the error-feedback wrapper, which
every codec meets through them; kept together so the defaults are read in one place.)

State that outlives a call (error-feedback residuals, PowerSGD's warm-start factors)
lives in per-client objects made by :meth:`Compressor.init_state` and owned by the
caller, so one compressor instance serves every client. ``compress_batch`` updates the
states it is given in place.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedbench.compress import ids
from fedbench.compress.finite import all_finite

Generators = Sequence[torch.Generator | None] | None
States = Sequence[Any] | None


def finite_output(decode: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Wrap a ``decode_batch`` or ``decode`` so that a non-finite result raises ValueError.

    Applied to every subclass's own ``decode_batch`` and ``decode`` by
    :meth:`Compressor.__init_subclass__`; a method marked ``_finite_checked`` (already
    wrapped, or one that only delegates to a wrapped one) is left alone, so the pass
    runs once per decode.
    """

    @functools.wraps(decode)
    def checked(self: Compressor, msgs: Any, device=None) -> torch.Tensor:
        out = decode(self, msgs, device)
        if isinstance(out, torch.Tensor) and not all_finite(out):
            raise ValueError(
                f"corrupt {self.name} message: it decodes to non-finite values (NaN or inf "
                f"in {out.dtype}: a scale, factor or value that overflows the dtype)"
            )
        return out

    checked._finite_checked = True  # type: ignore[attr-defined]
    return checked


class Compressor(abc.ABC):  # noqa: B024 (either method pair suffices: see __new__)
    """Base of every codec. One instance is stateless and serves every client.

    Implement ``encode``/``decode`` (one tensor) or ``compress_batch``/``decode_batch``
    (a cohort); see the module docstring.
    """

    name: ClassVar[str] = "abstract"
    codec_id: ClassVar[int] = 0  # from fedbench.compress.ids; user codecs: 128..255
    family: ClassVar[str] = ""  # one of ids.FAMILIES; what reports group codecs by
    biased: ClassVar[bool] = True  # False where E[decode(encode(x))] == x (proved in tests)
    randomised: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Check the class's codec_id (:func:`ids.check_class`) and route its own
        ``decode_batch`` and ``decode`` through the shared finite check."""
        super().__init_subclass__(**kwargs)
        if "codec_id" in cls.__dict__ and not isinstance(cls.__dict__["codec_id"], property):
            ids.check_class(cls.__module__, cls.__qualname__, cls.name, cls.codec_id)
        for method in ("decode_batch", "decode"):
            fn = cls.__dict__.get(method)
            if callable(fn) and not getattr(fn, "_finite_checked", False):
                setattr(cls, method, finite_output(fn))

    def __new__(cls, *args: Any, **kwargs: Any) -> Compressor:
        """Refuse a class that cannot encode or cannot decode, before it loops forever."""
        missing = []
        if not any(_overrides(cls, m) for m in ("compress_batch", "encode_batch", "encode")):
            missing.append("encode (or compress_batch)")
        if not (_overrides(cls, "decode_batch") or _overrides(cls, "decode")):
            missing.append("decode (or decode_batch)")
        if missing:
            raise ValueError(
                f"{cls.__qualname__} implements neither {' nor '.join(missing)}: a codec "
                "needs encode(x, generator, state) -> bytes and decode(msg) -> Tensor, "
                "or the batched compress_batch and decode_batch"
            )
        cid = cls.codec_id
        if isinstance(cid, int) and cid == 0:
            raise ValueError(
                f"{cls.__qualname__} has no codec_id: a user codec declares one in "
                f"{ids.USER_IDS.start}..{ids.USER_IDS.stop - 1} (see fedbench.compress.ids)"
            )
        return super().__new__(cls)

    # -- the batched path (default: a loop over the single-tensor methods) -------------
    def compress_batch(
        self, x: torch.Tensor, generators: Generators = None, states: States = None
    ) -> tuple[list[bytes], torch.Tensor]:
        """Encode each row of ``x`` (clients, *shape).

        Returns the messages (one per client) and what the receiver will decode from
        them, (clients, *shape) in ``x.dtype`` on ``x.device``. ``generators[i]`` is the
        only randomness client i's message may draw from; ``states[i]`` is client i's
        state from :meth:`init_state`, updated in place.

        The default encodes row by row with :meth:`encode` and decodes each message
        back, so what the sender counts is what the receiver gets.
        """
        gens, sts = check_batch(self, x, generators, states)
        msgs = [self.encode(x[i], gens[i], sts[i]) for i in range(x.shape[0])]
        decoded = [self.decode(m, x.device) for m in msgs]
        if not decoded:
            return msgs, torch.empty_like(x)
        return msgs, torch.stack(decoded).to(x.dtype)

    def decode_batch(
        self, msgs: Sequence[bytes], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Decode messages of one shape into (clients, *shape) on ``device``.

        Untrusted input: anything malformed raises ValueError. The default decodes each
        message with :meth:`decode` and stacks them (their shapes must agree).
        """
        if len(msgs) == 0:
            raise ValueError(f"{self.name}: decode_batch needs at least one message")
        outs = [self.decode(m, device) for m in msgs]
        first = outs[0]
        if any(o.shape != first.shape or o.dtype != first.dtype for o in outs):
            raise ValueError(f"{self.name}: messages in one batch differ in shape or dtype")
        return torch.stack(outs)

    def encode_batch(
        self, x: torch.Tensor, generators: Generators = None, states: States = None
    ) -> list[bytes]:
        """The messages alone; codecs override it to skip building the decoded tensor."""
        if _overrides(type(self), "compress_batch"):
            return self.compress_batch(x, generators, states)[0]
        gens, sts = check_batch(self, x, generators, states)
        return [self.encode(x[i], gens[i], sts[i]) for i in range(x.shape[0])]

    # -- the single-tensor path (default: the batched path with one row) ---------------
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
        """The tensor one message describes (untrusted input: ValueError if malformed)."""
        return self.decode_batch([msg], device)[0]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def _overrides(cls: type, method: str) -> bool:
    """True if ``cls`` (or a base below Compressor) defines ``method`` itself."""
    return getattr(cls, method) is not getattr(Compressor, method)


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


class _Wrapper(Compressor):
    """A codec around another one, ``inner``: family, bias and randomness are the inner
    codec's, and decoding is the inner codec's, already finite-checked. ``prefix`` names
    the wrapper in ``name`` (``ef-topk``). The wire id is the subclass's to declare: the
    inner codec's (error feedback, EF21: their messages are the inner codec's) or a
    table id of its own (entropy coding: a frame around the inner message)."""

    prefix: ClassVar[str] = "wrapped"
    inner: Compressor

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.prefix}-{self.inner.name}"

    @property
    def family(self) -> str:  # type: ignore[override]
        return self.inner.family

    @property
    def biased(self) -> bool:  # type: ignore[override]
        return self.inner.biased

    @property
    def randomised(self) -> bool:  # type: ignore[override]
        return self.inner.randomised

    def decode_batch(self, msgs, device=None):
        return self.inner.decode_batch(msgs, device)

    decode_batch._finite_checked = True  # type: ignore[attr-defined]  # the inner codec checks


class ErrorFeedback(_Wrapper):
    """Error feedback around any compressor (Karimireddy et al. 2019, Alg. 2; Seide 2014).

    The message encodes ``x + e`` and the residual becomes
    ``e <- (x + e) - decode(encode(x + e))``, so what a biased compressor drops is sent
    later instead of lost. The wire format is the inner codec's, unchanged.
    """

    prefix = "ef"

    @property
    def codec_id(self) -> int:  # type: ignore[override]
        return self.inner.codec_id

    def __init__(self, inner: Compressor) -> None:
        if isinstance(inner, ErrorFeedback):
            raise ValueError("error feedback is already applied; do not wrap twice")
        self.inner = inner

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

    def __repr__(self) -> str:
        return f"ErrorFeedback({self.inner!r})"
