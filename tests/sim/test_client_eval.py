"""Per-client evaluation (LEAF style): where clients hold test data of their own, the
final model is scored on each client's own test samples, beside the global accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedbench.sim.engine import Simulation, run


def _npz(tmp_path, clients: int = 4) -> str:
    rng = np.random.default_rng(0)
    n_train, n_test = 40 * clients, 10 * clients
    X_train = rng.normal(size=(n_train, 6)).astype(np.float32)
    X_test = rng.normal(size=(n_test, 6)).astype(np.float32)
    y_train = (X_train[:, 0] > 0).astype(np.int64)
    y_test = (X_test[:, 0] > 0).astype(np.int64)
    path = tmp_path / "writers.npz"
    np.savez(
        path,
        X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test,
        client_train=np.repeat(np.arange(clients), 40),
        client_test=np.repeat(np.arange(clients), 10)[::-1].copy(),
    )  # fmt: skip
    return str(path)


def _cfg(make_cfg, path: str, *extra: str) -> dict:
    return make_cfg(
        "dataset=npz", f"dataset.path={path}", "partition=natural", "num_clients=4",
        "clients_per_round=4", "model=logreg", *extra,
    )  # fmt: skip


def test_per_client_accuracy_by_hand(make_cfg, tmp_path) -> None:
    sim = Simulation(_cfg(make_cfg, _npz(tmp_path)))
    sim.round(1)
    acc, _ = sim.evaluate()
    got = sim.client_accuracy()
    params = [p.unsqueeze(0) for p in sim.params]
    logits = sim.spec.forward(params, sim.X_test.unsqueeze(0), None)[0]
    correct = (logits.argmax(1) == sim.y_test).numpy()
    owner = np.repeat(np.arange(4), 10)[::-1]
    per = np.array([correct[owner == c].mean() for c in range(4)])
    assert got["client_accuracy_weighted"] == pytest.approx(correct.mean()) == pytest.approx(acc)
    assert got["client_accuracy_mean"] == pytest.approx(per.mean())
    assert got["client_accuracy_p10"] == pytest.approx(np.percentile(per, 10))


def test_per_client_keys_reach_rows_and_summary_only_with_client_test_data(
    make_cfg, tmp_path
) -> None:
    rows: list[dict] = []
    s = run(_cfg(make_cfg, _npz(tmp_path), "eval_every=2"), on_round=rows.append)
    assert s["status"] == "ok"
    assert "client_accuracy_p10" in rows[1] and "client_accuracy_p10" not in rows[0]
    assert s["client_accuracy_mean"] == rows[-1]["client_accuracy_mean"]
    plain = run(make_cfg())  # iid digits: no client holds test data of its own
    assert "client_accuracy_mean" not in plain
    assert Simulation(make_cfg()).client_accuracy() == {}
    torch.testing.assert_close(
        torch.tensor(s["final_accuracy"]), torch.tensor(s["client_accuracy_weighted"])
    )
