"""Wire messages are frozen: refactors of the shared kernels must not change a byte.

The digests were recorded before the bit packer, rounding, bucket layout and top-k
selection moved out of quant.py and sparse.py (issue 12 item 6). Each digest covers,
for every config in conf/compressor (its YAML defaults, error feedback included), three
fixed inputs encoded twice in a row with a state (stateful codecs evolve) and once as a
batch of three clients, all with fixed generators. A change to any message of any codec
changes its digest; a deliberate format change must bump ``wire.FORMAT_VERSION`` and
re-record these.

Re-recorded once without a format change: the rotation codecs (drive, eden, rotated_quant)
when the CPU Hadamard transform moved from BLAS products with H_16 to the compiled
butterflies of ``fedbench.compress._wht``. The layout is the same; the rotated values
round differently in the last bit, so a few codes and every scale's low bits moved.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from fedbench.compress import available, build

GOLDEN = {
    "bf16": "0ac167530f093455",
    "dgc": "afb730332085020a",
    "drive": "931e76397a69d38f",
    "drive_unbiased": "a7b249253f8c5714",
    "eden": "cf62b091964906a9",
    "eden05": "62d878af3f17777a",
    "eden1": "e1c04d3a58bda60b",
    "eden4": "2a0dc8035590de89",
    "fp16": "6d26dc2c3467c417",
    "natural": "5f04ee4579489f4a",
    "none": "e053d041855d1548",
    "powersgd": "8e5628f7a164d24f",
    "powersgd1": "faf4c1e5e4e98d82",
    "powersgd2": "9afb291d7f355eca",
    "powersgd4": "8e5628f7a164d24f",
    "powersgd8": "c766b3d35df9e225",
    "qsgd": "4380b839e623e41e",
    "qsgd16": "1fb3be26d6b921ff",
    "qsgd_ans": "4508a18cb08e8862",
    "qsgd4": "7d89cc3c10a4e627",
    "qsgd_elias": "e0f448a55a237e42",
    "quant": "e848e6e302ac83ef",
    "quant1": "e25367ab14b4c41e",
    "quant2": "60fe869efee9aafe",
    "quant4": "5d538b6685ec3aaf",
    "quant8": "e848e6e302ac83ef",
    "randk": "b2ffdc01c5965995",
    "randk1": "b2ffdc01c5965995",
    "randk10": "6560c189236f34ad",
    "rotated_quant": "d11ffe65f13fc246",
    "sign": "1de474699b4bfe32",
    "sign_ef": "6e62eed06842b024",
    "sketch": "9b948e0ec97696d3",
    "stc": "54ac0928ec4b4310",
    "stc01": "144b9c56240b015e",
    "svd": "c9833983c36b88b4",
    "terngrad": "412d4ae4bff66f11",
    "topk": "d57dfe2326a16a51",
    "topk005": "7c17c0bde1698772",
    "topk01": "e5e8dc69408c38a1",
    "topk1": "d57dfe2326a16a51",
    "topk10": "601317ae2ebab5fb",
}
# Entropy-coded variants (zstd over the inner message): the wrapper's bytes are frozen too.
GOLDEN_ENTROPY = {
    "qsgd": "079b25f6df949771",
    "terngrad": "fcb6b19d8a1db63b",
    "topk": "f0db04c964962ad5",
    "eden": "17700a33ad5a8ff2",
    "quant4": "0eaaf58548d5ad18",
}


def inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    a = torch.randn(1000, generator=g)
    b = torch.randn(64, 48, generator=g) * 0.01
    mag = (torch.randn(3, 5, 70, generator=g) * 1.5).exp()
    c = mag * torch.sign(torch.randn(3, 5, 70, generator=g))
    return [a, b, c.to(torch.float64)]


def digest(name: str, **params) -> str:
    """First 16 hex digits of the sha256 of every message ``build(name)`` writes here."""
    c = build(name, **params)
    h = hashlib.sha256()
    for j, x in enumerate(inputs()):
        st = c.init_state(tuple(x.shape), dtype=x.dtype)
        for r in range(2):  # two rounds: stateful codecs (EF, PowerSGD, DGC) evolve
            h.update(c.encode(x * (r + 1), torch.Generator().manual_seed(100 * j + r), st))
        xb = torch.stack([x, -x, 0.5 * x])
        sts = [c.init_state(tuple(x.shape), dtype=x.dtype) for _ in range(3)]
        gens = [torch.Generator().manual_seed(7 + i) for i in range(3)]
        for m in c.encode_batch(xb, gens, sts):
            h.update(m)
    return h.hexdigest()[:16]


def test_every_recorded_config_still_exists():
    """Configs added later join GOLDEN once their format is settled."""
    assert set(GOLDEN) <= set(available())


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_messages_are_byte_identical_to_the_recorded_ones(name):
    assert digest(name) == GOLDEN[name]


@pytest.mark.parametrize("name", sorted(GOLDEN_ENTROPY))
def test_entropy_coded_messages_are_byte_identical(name):
    assert digest(name, entropy="zstd") == GOLDEN_ENTROPY[name]
