"""Codec identity: the one table of wire ids, codec classes and families.

Every message carries its codec's id in the header's ``codec`` byte, and a decoder
refuses a message whose id is not its own: two codecs sharing an id would decode each
other's bytes as garbage. So ids come from this table and nowhere else: each built-in
codec class sets ``codec_id = ids.codec_id("<name>")`` and ``family =
ids.family("<name>")``, and ``tests/compress/test_ids.py`` checks that the ids are
unique and that every concrete :class:`~fedbench.compress.Compressor` subclass in the
package has its row here.

**Families** are the tutorial's "communication reduction strategies", widened to what
fedbench has: ``dense`` (fp32, the baseline), ``quantisation`` (fewer bits a value),
``sparsification`` (fewer values), ``low-rank`` (factors), ``sketch`` (linear sketches
merged on the server) and ``rotation`` (a shared random rotation, then quantisation).
The app records a codec's family in ``summary.json``; reports read it from there.

**User codecs** (a ``_target_`` outside ``fedbench.compress``) declare their own
``codec_id`` in :data:`USER_IDS` (128..255): ids 0..127 belong to fedbench (0 is "no
id", 1..127 the built-ins and their future siblings). Both rules are checked when the
class is created (:func:`check_class`), so a user codec that reuses a built-in's id, or
another user class's, fails at import with a one-line error naming both, not at decode
time. A codec may pick any free id in the range; the table below never grows into it.

This module imports nothing heavy (no torch): ``fedbench.results`` reads it to label
old run folders by class name.
"""

from __future__ import annotations

from typing import NamedTuple

FAMILIES = ("dense", "quantisation", "sparsification", "low-rank", "sketch", "rotation")
USER_IDS = range(128, 256)
PACKAGE = "fedbench.compress"


class CodecInfo(NamedTuple):
    codec_id: int  # the header's codec byte
    family: str  # one of FAMILIES
    cls: str  # the class, relative to fedbench.compress ("quant.Quant")


# name (the codec's ``name``, as in conf/compressor/<name>.yaml) -> identity.
# Append only: an id, once used on the wire, is never reassigned.
CODECS: dict[str, CodecInfo] = {
    "none": CodecInfo(1, "dense", "dense.Dense"),
    "fp16": CodecInfo(2, "quantisation", "dense.Fp16"),
    "bf16": CodecInfo(3, "quantisation", "dense.Bf16"),
    "quant": CodecInfo(4, "quantisation", "quant.Quant"),
    "qsgd": CodecInfo(5, "quantisation", "qsgd.QSGD"),
    "terngrad": CodecInfo(6, "quantisation", "terngrad.TernGrad"),
    "sign": CodecInfo(7, "quantisation", "sign.Sign"),
    "topk": CodecInfo(8, "sparsification", "sparse.TopK"),
    "randk": CodecInfo(9, "sparsification", "sparse.RandK"),
    "powersgd": CodecInfo(10, "low-rank", "lowrank.PowerSGD"),
    "natural": CodecInfo(11, "quantisation", "natural.Natural"),
    "stc": CodecInfo(12, "sparsification", "stc.STC"),
    "svd": CodecInfo(13, "low-rank", "lowrank.SVD"),
    "sketch": CodecInfo(14, "sketch", "sketch.CountSketch"),
    "dgc": CodecInfo(15, "sparsification", "dgc.DGC"),
    "drive": CodecInfo(20, "rotation", "rotation.Drive"),
    "eden": CodecInfo(21, "rotation", "rotation.Eden"),
    "rotated_quant": CodecInfo(22, "rotation", "rotation.RotatedQuant"),
    # A wrapper: its family is its inner codec's (Entropy.family is a property).
    "entropy": CodecInfo(23, "", "entropy.Entropy"),
    "majority_vote": CodecInfo(40, "quantisation", "majority.MajorityVote"),
}

# Class names of earlier fedbench versions, for run folders that recorded only a
# ``_target_``: lower-case class name -> codec name.
LEGACY_CLASSES = {"quantize": "quant", "signsgd": "sign", "scaledsign": "sign"}


def codec_id(name: str) -> int:
    """The wire id of the built-in codec ``name``."""
    try:
        return CODECS[name].codec_id
    except KeyError:
        raise ValueError(f"no codec {name!r} in fedbench.compress.ids.CODECS") from None


def family(name: str) -> str:
    """The family of the built-in codec ``name`` (one of :data:`FAMILIES`)."""
    try:
        return CODECS[name].family
    except KeyError:
        raise ValueError(f"no codec {name!r} in fedbench.compress.ids.CODECS") from None


def name_of_class(class_name: str) -> str | None:
    """The codec name of a built-in class name (``TopK`` or ``topk`` -> ``topk``), old
    names included; None if fedbench has no such codec class."""
    low = class_name.lower()
    for name, info in CODECS.items():
        if info.cls.rpartition(".")[2].lower() == low:
            return name
    return LEGACY_CLASSES.get(low)


_BUILTIN_IDS = {info.codec_id: name for name, info in CODECS.items()}
_USER_CLAIMS: dict[int, str] = {}  # id -> "module.QualName" of the user class holding it


def check_class(module: str, qualname: str, name: object, cid: object) -> None:
    """Refuse a codec class whose ``codec_id`` breaks the rules above (ValueError).

    Called by ``Compressor.__init_subclass__`` for every class that sets ``codec_id``
    itself. A class inside fedbench.compress must carry its table id; any other class
    an id in :data:`USER_IDS` that no other user class holds (the same class defined
    again, as by a module reload, keeps its claim).
    """
    path = f"{module}.{qualname}"
    if isinstance(cid, bool) or not isinstance(cid, int):
        raise ValueError(f"{path}: codec_id must be an int, got {cid!r}")
    if module == PACKAGE or module.startswith(PACKAGE + "."):
        want = CODECS.get(name) if isinstance(name, str) else None
        if want is None or want.codec_id != cid:
            raise ValueError(
                f"{path}: built-in codec {name!r} must take its codec_id from "
                f"fedbench.compress.ids.CODECS (got {cid})"
            )
        return
    if cid not in USER_IDS:
        clash = f" (it is {_BUILTIN_IDS[cid]!r}'s)" if cid in _BUILTIN_IDS else ""
        raise ValueError(
            f"{path}: codec_id={cid} is reserved for fedbench{clash}; a user codec must "
            f"declare a codec_id in {USER_IDS.start}..{USER_IDS.stop - 1}"
        )
    holder = _USER_CLAIMS.setdefault(cid, path)
    if holder != path:
        raise ValueError(
            f"{path}: codec_id={cid} is already taken by {holder}; pick another in "
            f"{USER_IDS.start}..{USER_IDS.stop - 1}"
        )
