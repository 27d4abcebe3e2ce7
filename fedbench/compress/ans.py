"""An order-0 ANS coder of byte strings (two passes: count, then code), via ``constriction``.

``entropy: ans`` codes the inner codec's message byte by byte with asymmetric numeral
systems (Duda 2013; constriction's stack ``AnsCoder``, Bamler 2022) under the message's
own byte histogram, sent with it. Within ~0.1% of the order-0 entropy of the bytes plus
the table, where zstd's LZ77 + Huffman pays for matching it seldom finds in codes.

Frame (after the entropy header)::

    nsym u16 (1..256) | symbols u8[nsym] (ascending) | freqs u16[nsym] (>= 1) | words u32[]

``freqs`` are the byte counts scaled to sum to at most 2^16 (every present byte keeps
at least 1), so encoder and decoder build the same quantised model from the same
integers. A message of one distinct byte sends no words.
"""

from __future__ import annotations

import numpy as np

_FREQ_TOTAL = 1 << 16


def _constriction():
    try:
        import constriction
    except ImportError:  # pragma: no cover - exercised only without the package
        raise ValueError(
            "entropy coder 'ans' needs the constriction package: pip install constriction"
        ) from None
    return constriction


def _model(freqs: np.ndarray):
    c = _constriction()
    return c.stream.model.Categorical(freqs.astype(np.float64), perfect=False)


def quantised_freqs(counts: np.ndarray) -> np.ndarray:
    """Counts (nsym,) > 0 scaled to u16 frequencies summing to at most 2^16, each >= 1."""
    scaled = np.floor(counts * ((_FREQ_TOTAL - len(counts)) / counts.sum())).astype(np.int64)
    return np.maximum(scaled, 1).astype(np.uint16)


def encode_bytes(data: bytes) -> bytes:
    """The ANS frame of ``data`` (non-empty)."""
    sym = np.frombuffer(data, dtype=np.uint8)
    counts = np.bincount(sym, minlength=256)
    symbols = np.flatnonzero(counts).astype(np.uint8)
    freqs = quantised_freqs(counts[symbols])
    table = np.uint16(len(symbols)).tobytes() + symbols.tobytes() + freqs.astype("<u2").tobytes()
    if len(symbols) == 1:
        return table
    index = np.zeros(256, dtype=np.int32)
    index[symbols] = np.arange(len(symbols), dtype=np.int32)
    coder = _constriction().stream.stack.AnsCoder()
    coder.encode_reverse(index[sym], _model(freqs))
    return table + coder.get_compressed().astype("<u4").tobytes()


def decode_bytes(frame: bytes | memoryview, n: int) -> bytes:
    """The ``n`` bytes an ANS frame codes; ValueError if the frame is malformed."""
    buf = memoryview(frame)
    if len(buf) < 2:
        raise ValueError("corrupt entropy message: truncated ans table")
    nsym = int(np.frombuffer(buf[:2], dtype="<u2")[0])
    if not 1 <= nsym <= 256 or len(buf) < 2 + 3 * nsym:
        raise ValueError(f"corrupt entropy message: ans table of {nsym} symbols")
    symbols = np.frombuffer(buf[2 : 2 + nsym], dtype=np.uint8)
    freqs = np.frombuffer(buf[2 + nsym : 2 + 3 * nsym], dtype="<u2")
    if (np.diff(symbols.astype(np.int16)) <= 0).any() or (freqs == 0).any():
        raise ValueError("corrupt entropy message: ans symbols not ascending or a zero freq")
    if int(freqs.sum(dtype=np.int64)) > _FREQ_TOTAL:
        raise ValueError("corrupt entropy message: ans frequencies exceed 2^16")
    words = buf[2 + 3 * nsym :]
    if nsym == 1:
        if len(words):
            raise ValueError("corrupt entropy message: trailing bytes after a one-symbol table")
        return bytes(symbols) * n
    if len(words) % 4 or not len(words):
        raise ValueError(f"corrupt entropy message: ans stream of {len(words)} bytes")
    try:
        coder = _constriction().stream.stack.AnsCoder(
            np.frombuffer(words, dtype="<u4").astype(np.uint32)
        )
        idx = coder.decode(_model(freqs), n)
        exhausted = coder.is_empty()
    except Exception as e:  # the Rust side reports malformed streams as various errors
        raise ValueError(f"corrupt entropy message: ans: {e}") from None
    if not exhausted:
        raise ValueError("corrupt entropy message: ans stream longer than its symbols")
    return symbols[idx].tobytes()
