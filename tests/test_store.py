"""fedbench.store: identity, tolerant reads, race-free save/restore, locks, permissions."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedbench import fingerprint, store

CFG = {"seed": 0, "rounds": 2, "dataset": {"name": "digits"}, "device": "cpu", "store_dir": "x"}


def _run_dir(tmp: Path, status: str = "ok", rounds: int = 2, tag: str = "") -> Path:
    run = tmp / f"run{tag}"
    run.mkdir(parents=True, exist_ok=True)
    rows = [json.dumps({"round": r, "tag": tag}) for r in range(1, rounds + 1)]
    (run / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    (run / "summary.json").write_text(json.dumps({"status": status, "tag": tag}))
    return run


def test_key_follows_data_file_content(tmp_path: Path) -> None:
    data = tmp_path / "d.npz"
    data.write_bytes(b"first arrays")
    cfg = CFG | {"dataset": {"name": "npz", "path": str(data)}}
    key = store.config_hash(cfg)
    assert store.config_hash(cfg) == key
    data.write_bytes(b"other arrays")  # regenerated at the same path
    assert store.config_hash(cfg) != key
    data.write_bytes(b"first arrays")
    os.utime(data, ns=(1, 1))  # same content, new mtime: the same cell
    assert store.config_hash(cfg) == key
    assert fingerprint.fingerprint(cfg)["data_sha"] == {str(data): fingerprint.file_sha(data)}


def test_key_follows_user_module_source_without_importing_it(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "mylab_models_xyz"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (pkg / "nets.py").write_text("class Net: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = CFG | {"model": {"_target_": "mylab_models_xyz.nets.Net", "width": 8}}
    key = store.config_hash(cfg)
    assert "mylab_models_xyz" not in sys.modules
    mods = fingerprint.fingerprint(cfg)["user_modules"]
    assert list(mods) == ["mylab_models_xyz.nets"] and mods["mylab_models_xyz.nets"]
    (pkg / "nets.py").write_text("class Net:  # a bug fixed\n    pass\n")
    assert store.config_hash(cfg) != key
    # fedbench's own targets are covered by source_sha, not listed
    own = CFG | {"compressor": {"_target_": "fedbench.compress.quant.Quantize"}}
    assert fingerprint.fingerprint(own)["user_modules"] == {}


def test_key_follows_fedbench_source_and_version(monkeypatch) -> None:
    key = store.config_hash(CFG)
    monkeypatch.setattr(fingerprint, "source_sha", lambda: "0" * 16)
    assert store.config_hash(CFG) != key
    monkeypatch.undo()
    monkeypatch.setattr(fingerprint.fedbench, "__version__", "9.9")
    assert store.config_hash(CFG) != key


def test_key_follows_device_kind_not_index_nor_output_keys() -> None:
    cpu = store.config_hash(CFG)
    assert store.config_hash(CFG | {"device": "cuda"}) != cpu
    assert store.config_hash(CFG | {"device": "cuda:1"}) == store.config_hash(
        CFG | {"device": "cuda:0"}
    )
    assert store.config_hash(CFG | {"store_dir": "elsewhere", "force": True}) == cpu


def test_fingerprint_is_cheap_when_cached(tmp_path: Path) -> None:
    data = tmp_path / "d.npz"
    data.write_bytes(os.urandom(1 << 20))
    cfg = CFG | {"dataset": {"name": "npz", "path": str(data)}}
    store.config_hash(cfg)
    start = time.perf_counter()
    for _ in range(20):
        store.config_hash(cfg)
    assert (time.perf_counter() - start) / 20 < 0.05


@pytest.mark.parametrize("text", ["[1, 2]", '"ok"', "null", "{not json", '{"status": "ok"}'])
def test_broken_entry_is_a_miss_with_a_warning(tmp_path, caplog, text) -> None:
    run = _run_dir(tmp_path)
    entry = store.save(tmp_path / "store", "k", run, CFG)
    assert store.lookup(tmp_path / "store", "k") is not None
    (entry / "summary.json").write_text(text)
    if text == '{"status": "ok"}':
        (entry / "metrics.jsonl").unlink()
    with caplog.at_level(logging.WARNING, logger="fedbench.store"):
        assert store.lookup(tmp_path / "store", "k") is None
    assert "treated as missing" in caplog.text
    # a broken entry is replaced by the next save
    assert store.save(tmp_path / "store", "k", run, CFG) is not None
    assert store.lookup(tmp_path / "store", "k") is not None


def test_save_keeps_a_valid_entry_unless_replace(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store.save(root, "k", _run_dir(tmp_path, tag="a"), CFG)
    store.save(root, "k", _run_dir(tmp_path, tag="b"), CFG)
    assert store.restore(store.lookup(root, "k"), tmp_path / "out")["tag"] == "a"
    store.save(root, "k", _run_dir(tmp_path, tag="c"), CFG, replace=True)
    assert store.restore(store.lookup(root, "k"), tmp_path / "out")["tag"] == "c"
    assert len(list((root / store.ENTRIES).iterdir())) == 1  # the replaced one is gone


def test_concurrent_save_and_restore_never_miss(tmp_path: Path) -> None:
    root = tmp_path / "store"
    runs = [_run_dir(tmp_path, tag=t, rounds=50) for t in "ab"]
    store.save(root, "k", runs[0], CFG)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            try:
                store.save(root, "k", runs[i % 2], CFG, replace=True)
            except BaseException as e:
                errors.append(e)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    misses = 0
    try:
        deadline = time.monotonic() + 2.0
        reads = 0
        while time.monotonic() < deadline:
            entry = store.lookup(root, "k")
            summary = None if entry is None else store.restore(entry, tmp_path / "out")
            if summary is None:
                misses += 1
            else:  # metrics and summary come from the same entry
                rows = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
                assert len(rows) == 50 and json.loads(rows[0])["tag"] == summary["tag"]
            reads += 1
    finally:
        stop.set()
        t.join()
    assert errors == [] and misses == 0 and reads > 50


def test_entries_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        entry = store.save(tmp_path / "store", "k", _run_dir(tmp_path), CFG).resolve()
    finally:
        os.umask(old)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o750
    for name in ("summary.json", "metrics.jsonl", "config.json"):
        assert stat.S_IMODE((entry / name).stat().st_mode) == 0o640, name


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_held_released_and_stale_taken_over(tmp_path: Path) -> None:
    root = tmp_path / "store"
    lock, holder = store.try_lock(root, "k")
    assert lock is not None and holder is None
    info = json.loads((root / "k.lock").read_text())
    assert info["pid"] == os.getpid() and info["host"] and info["started"] > 0
    again, holder = store.try_lock(root, "k")
    assert again is None and holder["pid"] == os.getpid()
    store.release(lock)
    assert not (root / "k.lock").exists()

    import socket

    here = socket.gethostname()
    cases = [
        ({"pid": _dead_pid(), "host": here, "started": time.time()}, True),
        ({"pid": 1, "host": "other-host", "started": time.time() - store.LOCK_STALE_S - 1}, True),
        ({"pid": 1, "host": "other-host", "started": time.time()}, False),
    ]
    for info, stale in cases:
        (root / "k.lock").write_text(json.dumps(info))
        lock, _ = store.try_lock(root, "k")
        assert (lock is not None) == stale, info
        store.release(lock)
        (root / "k.lock").unlink(missing_ok=True)


def test_claim_waits_for_the_holder_then_reuses(tmp_path, monkeypatch, caplog) -> None:
    root = tmp_path / "store"
    monkeypatch.setattr(store, "LOCK_POLL_S", 0.05)
    lock, _ = store.try_lock(root, "k")

    def finish_later() -> None:
        time.sleep(0.5)
        store.save(root, "k", _run_dir(tmp_path), CFG)
        store.release(lock)

    t = threading.Thread(target=finish_later)
    t.start()
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="fedbench.store"):
        got_lock, entry = store.claim(root, "k")
    t.join()
    assert got_lock is None and entry is not None and time.monotonic() - start >= 0.4
    assert f"being computed by pid {os.getpid()}" in caplog.text
    # a holder that outlives the bound: compute anyway, without the lock
    lock, _ = store.try_lock(root, "k2")
    assert store.claim(root, "k2", wait_s=0.2) == (None, None)
    store.release(lock)
    assert store.claim(root, "k2")[0] is not None  # free again: claimed
