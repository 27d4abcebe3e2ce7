"""Message plumbing shared by the codecs: parse a batch, stack rows, cast the output.

:class:`BytesFirstCodec` is the base of codecs whose encoder can skip the decoded tensor
(a full-size output) when only the bytes are wanted (``encode``/``encode_batch``).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np
import torch

from fedbench.compress import wire
from fedbench.compress.base import Compressor
from fedbench.compress.finite import all_finite


def parse_batch(msgs: Sequence[bytes], name: str, codec_id: int, parse) -> tuple[list, object]:
    """Parse every message with ``parse(reader, header) -> (meta, fields)``.

    All messages of one batch must share header and meta (shape, dtype, settings).
    Returns the per-message fields and the shared ``(header, meta)``.
    """
    if len(msgs) == 0:
        raise ValueError(f"{name}: decode_batch needs at least one message")
    fields, shared = [], None
    for msg in msgs:
        r = wire.Reader(msg, f"{name} message")
        h = r.header(codec_id)
        meta, f = parse(r, h)
        r.expect_end()
        if shared is not None and shared != (h, meta):
            raise ValueError(f"{name}: messages in one batch differ in shape, dtype or settings")
        shared = (h, meta)
        fields.append(f)
    return fields, shared


def stack_rows(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


def to_output(values: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """Cast fp32 values to the message dtype; an overflow to inf raises ValueError.

    Decoders get the same check from :class:`Compressor`'s shared finite check of every
    ``decode_batch`` result; here it guards the sender's decoded tensor.
    """
    if dtype == torch.float32:
        return values
    out = values.to(dtype)
    if dtype != torch.float64 and not all_finite(out):
        raise ValueError(f"corrupt {name} message: values overflow {dtype}")
    return out


class BytesFirstCodec(Compressor):
    """Shared plumbing: ``encode`` builds the bytes without the decoded tensor.

    Subclasses implement ``_compress(x, generators, states, with_decoded)``; the
    decoded tensor (a full-size output) is computed only for :meth:`compress_batch`.
    """

    @abc.abstractmethod
    def _compress(self, x, generators, states, with_decoded: bool):
        """(messages, decoded (rows, *shape) or None when ``with_decoded`` is false)."""

    def compress_batch(self, x, generators=None, states=None):
        return self._compress(x, generators, states, True)

    def encode_batch(self, x, generators=None, states=None):
        return self._compress(x, generators, states, False)[0]

    def encode(self, x, generator=None, state=None):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{self.name}: expected a torch.Tensor, got {type(x).__name__}")
        return self.encode_batch(x.unsqueeze(0), [generator], [state])[0]

    def _output(self, decoded, dtype: torch.dtype, shape: tuple[int, ...]):
        """(rows, d) fp32 -> (rows, *shape) in ``dtype``; None when not asked for."""
        if decoded is None:
            return None
        return to_output(decoded, dtype, self.name).reshape(decoded.shape[0], *shape)


# The name quant.py's users know it by.
QuantisedCodec = BytesFirstCodec
