"""Every random draw of a run, derived from ``(seed, round, client, ...)``.

Two kinds of randomness:

* Python-side seeds (:func:`mix`) for ``torch.Generator`` objects: client sampling,
  model initialisation, the compressors' per-client generators.
* Tensor-side counter-based bits (:func:`hash32` and friends) for what every client
  needs at every local step (minibatch shuffles, dropout masks). They are pure
  functions of integer keys evaluated with int32 tensor ops, so a whole cohort draws
  its bits in one call, and client i's bits are the same whichever chunk, cohort or
  engine computes them. No per-client Python loop, no generator state.

The 32-bit mixer is Chris Wellons' "lowbias32" (a MurmurHash3-style finaliser with
searched constants). It relies on int32 multiplication wrapping modulo 2^32, which is
what torch does on CPU and CUDA; ``tests/sim/test_seeding.py`` checks it against an
int64 reference.
"""

from __future__ import annotations

import torch

MASK64 = (1 << 64) - 1
GOLDEN32 = 0x9E3779B9 - (1 << 32)  # the golden-ratio increment, as a signed int32

# Purposes: a draw for one purpose never shares a key with another.
SAMPLE, INIT, SHUFFLE, DROPOUT, COMPRESS, DOWNLINK, AVAILABLE, NETWORK = range(1, 9)


def mix(*words: int) -> int:
    """A 63-bit seed from a sequence of non-negative integers (SplitMix64 chained).

    Used for ``torch.Generator.manual_seed`` and numpy generators; changing any word
    gives an unrelated seed.
    """
    h = 0x243F6A8885A308D3
    for w in words:
        h = (h ^ (int(w) & MASK64)) & MASK64
        h = (h + 0x9E3779B97F4A7C15) & MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        h = z ^ (z >> 31)
    return h >> 1


def generator(device: torch.device | str, *words: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded by :func:`mix` of ``words``."""
    g = torch.Generator(device=device)
    g.manual_seed(mix(*words))
    return g


def _to_i32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int32 tensors, elementwise: a bijection of 32-bit words.

    Right shifts are made logical by masking (torch's >> on int32 is arithmetic).
    """
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * -0x7B935975  # 0x846CA68B as a signed int32
    return x ^ ((x >> 16) & 0xFFFF)


def derive(keys: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """Keys for the next level down: ``hash32(keys ^ hash32(value * golden))``.

    ``keys`` (n,) int32; ``value`` an int or an int tensor broadcastable to ``keys``.
    """
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(_to_i32(value), dtype=torch.int32, device=keys.device)
    return hash32(keys ^ hash32(value.to(torch.int32) * GOLDEN32))


def client_keys(
    clients: torch.Tensor, *words: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """One int32 key per client for the purpose named by ``words``. # (clients,)

    ``words`` are e.g. ``(seed, round, SHUFFLE)``; the key of client c does not depend
    on which other clients are in ``clients``.
    """
    base = torch.tensor(_to_i32(mix(*words)), dtype=torch.int32, device=device)
    return derive(base.expand(clients.shape), clients.to(device=device, dtype=torch.int32))


def epoch_permutation(
    keys: torch.Tensor, epoch: torch.Tensor, n: torch.Tensor, width: int
) -> torch.Tensor:
    """Each client's shuffle of its own samples for its current epoch. # (clients, width)

    Row i holds a permutation of ``range(n[i])`` in its first ``n[i]`` entries (then
    the padding positions, in order). It is the same for any ``width >= n[i]``: padded
    positions sort after every real one and the sort is stable.
    keys (clients,) int32 shuffle keys; epoch (clients,) int; n (clients,) int.
    """
    k = derive(keys, epoch)
    pos = torch.arange(width, device=keys.device, dtype=torch.int32)
    h = derive(k.unsqueeze(1), pos.unsqueeze(0)).to(torch.int64) + (1 << 31)  # [0, 2^32)
    h = torch.where(pos.unsqueeze(0) < n.unsqueeze(1), h, (1 << 32) + pos.to(torch.int64))
    return torch.argsort(h, dim=1, stable=True)


class DropoutBits:
    """Dropout keep-masks from counter-based bits, keyed by (client key, local step).

    Per (client, step) one key ``k = derive(client key, step)``; the bits for batch row b
    and word w are ``lowbias32(k ^ c[b, w])`` with ``c`` a fixed hash of the position, so
    a client's masks depend on nothing but its key and its own step counter. Each 32-bit
    word gives four masks: its bytes, each uniform on [0, 256), and a unit is dropped
    when its byte is below ``threshold = round(256 p)``. The drop probability is thus
    ``p`` rounded to a multiple of 2^-8 (``p_eff``: 0.2 -> 0.19921875); kept units are
    scaled by ``1 / (1 - p_eff)`` so the layer stays unbiased, as ``F.dropout`` does.

    Four masks per hash (not one per ``F.dropout`` draw) is what makes the cohort engine
    fast: bits for 1,000 clients x 32 samples x 192 units are 1.5M hashes of a few
    in-place int32 ops each (see ``benchmarks/bench_engine.py``).
    """

    def __init__(self, p: float, batch: int, units: int, device: torch.device | str) -> None:
        self.p = float(p)
        self.threshold = round(self.p * 256)
        self.p_eff = self.threshold / 256
        self.scale = 1.0 / (1.0 - self.p_eff) if self.p_eff < 1 else 0.0
        self.units = units
        self.words = (units + 3) // 4
        ctr = torch.arange(batch * self.words, device=device, dtype=torch.int32)
        self._counter_hash = hash32(ctr.view(batch, self.words) * GOLDEN32)  # reused every step

    def bytes_for(self, step_keys: torch.Tensor) -> torch.Tensor:
        """Uniform bytes (*keys.shape, batch, units) as uint8 for per-step keys of any shape.

        lowbias32 in place with one shift buffer: this runs over every unit of the cohort.
        """
        x = step_keys[..., None, None] ^ self._counter_hash  # (*keys, batch, words)
        t = torch.empty_like(x)
        for shift, mask, mul in (
            (16, 0xFFFF, 0x7FEB352D),
            (15, 0x1FFFF, -0x7B935975),
            (16, 0xFFFF, 0),
        ):
            torch.bitwise_right_shift(x, shift, out=t)  # arithmetic on int32: mask it logical
            x.bitwise_xor_(t.bitwise_and_(mask))
            if mul:
                x.mul_(mul)  # wraps modulo 2^32, as lowbias32 needs
        b = x.view(torch.uint8)  # little-endian bytes of each word, in unit order
        return b if b.shape[-1] == self.units else b[..., : self.units]

    def masks(self, keys: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Scaled keep-mask (clients, batch, units) in float32 for local step ``step``.

        keys (clients,) int32 dropout keys; step (clients,) int, each client's own
        local step counter. Row b of a client's mask is for its b-th batch position.
        Kept units hold ``float32(scale)``, dropped ones 0.
        """
        return self.masks_from_bytes(self.bytes_for(derive(keys, step)))

    def masks_from_bytes(self, b: torch.Tensor) -> torch.Tensor:
        """Scaled float32 keep-mask from :meth:`bytes_for`'s bytes (same shape)."""
        # Compare straight into float32: ~10x faster on CPU than a bool mask then where().
        m = torch.empty(b.shape, dtype=torch.float32, device=b.device)
        return torch.ge(b, self.threshold, out=m).mul_(self.scale)
