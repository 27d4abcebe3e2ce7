"""The kernel-benchmark regression gate (benchmarks/gate.py): ratios, verdicts, the CLI,
and one real benchmark pass with an injected 2x slowdown that the gate must catch."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

GATE_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "gate.py"


def _load_gate():
    # benchmarks/ is a folder of scripts, not a package: load the file itself.
    spec = importlib.util.spec_from_file_location("fedbench_bench_gate", GATE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gate = _load_gate()


def _bench(kernels: dict[str, float], clone: float = 1e-3) -> dict:
    """A pytest-benchmark JSON with one group per kernel: a clone and the kernel."""
    out = []
    for kernel, ratio in kernels.items():
        group, _, op = kernel.partition(" :: ")
        common = {"shape": [1000], "device": "cpu", "elements": 1000, "input_bytes": 4000}
        out.append(
            {
                "group": group,
                "name": f"clone[{group}]",
                "params": {},
                "fullname": f"bench_kernels.py::clone[{group}]",
                "stats": {"median": clone, "min": clone},
                "extra_info": {**common, "kernel": f"{group} :: clone", "op": "clone"},
            }
        )
        info = {**common, "kernel": kernel, "op": op, "compression_ratio": 2.0}
        out.append(
            {
                "group": group,
                "name": kernel,
                "params": {},
                "fullname": f"bench_kernels.py::kernel[{kernel}]",
                "stats": {"median": ratio * clone, "min": ratio * clone},
                "extra_info": info,
            }
        )
    return {"benchmarks": out}


BASE = {"fp16 n=1e6 cpu :: encode": 3.0, "fp16 n=1e6 cpu :: decode": 2.0}


def test_clone_ratios_divide_by_the_clone_of_the_same_shape():
    ratios = gate.clone_ratios(_bench(BASE, clone=2e-3))
    assert ratios == pytest.approx(BASE)


def test_clone_ratios_use_the_median_clone_of_a_shape_and_the_chosen_stat():
    bench = _bench({**BASE, "bf16 n=1e6 cpu :: encode": 4.0})
    bench["benchmarks"][0]["stats"] = {"min": 5e-3, "median": 5e-3}  # one clone hit by noise
    bench["benchmarks"][1]["stats"]["median"] = 9e-3  # encode: min 3 ms, median 9 ms
    assert gate.clone_ratios(bench) == pytest.approx({**BASE, "bf16 n=1e6 cpu :: encode": 4.0})
    assert gate.clone_ratios(bench, "median")["fp16 n=1e6 cpu :: encode"] == pytest.approx(9.0)
    with pytest.raises(ValueError, match="stat"):
        gate.clone_ratios(bench, "mean")


def test_retry_targets_are_the_offenders_and_the_clones_of_their_shape():
    ids = gate.retry_targets(_bench(BASE), ["fp16 n=1e6 cpu :: encode"])
    assert ids[0] == "bench_kernels.py::kernel[fp16 n=1e6 cpu :: encode]"
    assert sorted(ids[1:]) == sorted(f"bench_kernels.py::clone[{k.split(' :: ')[0]}]" for k in BASE)


def test_clone_ratios_skip_a_kernel_without_a_clone():
    bench = _bench(BASE)
    bench["benchmarks"] = [b for b in bench["benchmarks"] if b["extra_info"]["op"] != "clone"]
    assert gate.clone_ratios(bench) == {}


def test_compare_flags_only_kernels_slower_than_the_margin():
    now = {"fp16 n=1e6 cpu :: encode": 6.1, "fp16 n=1e6 cpu :: decode": 2.9, "new :: encode": 1.0}
    rows = {r.kernel: r for r in gate.compare(now, {**BASE, "gone :: decode": 1.0}, margin=1.5)}
    assert rows["fp16 n=1e6 cpu :: encode"].status == "SLOWER"
    assert rows["fp16 n=1e6 cpu :: encode"].change == pytest.approx(6.1 / 3.0)
    assert rows["fp16 n=1e6 cpu :: decode"].status == "ok"  # 1.45x < 1.5x
    assert rows["new :: encode"].status == "new"
    assert rows["gone :: decode"].status == "gone"
    assert [r.kernel for r in gate.offenders(rows.values())] == ["fp16 n=1e6 cpu :: encode"]


def test_compare_rejects_a_margin_that_fails_everything():
    with pytest.raises(ValueError, match="margin"):
        gate.compare(BASE, BASE, margin=1.0)


def _write(tmp_path: Path, name: str, doc: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def test_cli_update_then_check_passes_and_fails_on_a_2x_slower_kernel(tmp_path, capsys):
    baseline = tmp_path / "baseline.json"
    run = _write(tmp_path, "run.json", _bench(BASE))
    assert gate.main(["update", "--json", run, "--baseline", str(baseline)]) == 0
    assert json.loads(baseline.read_text())["kernels"] == pytest.approx(BASE)

    assert gate.main(["check", "--json", run, "--baseline", str(baseline)]) == 0
    assert "OK" in capsys.readouterr().out

    slow = {**BASE, "fp16 n=1e6 cpu :: encode": 2 * BASE["fp16 n=1e6 cpu :: encode"]}
    slow_run = _write(tmp_path, "slow.json", _bench(slow))
    assert gate.main(["check", "--json", slow_run, "--baseline", str(baseline)]) == 1
    out = capsys.readouterr().out
    assert "FAIL: 1 kernel(s)" in out
    assert out.split("FAIL")[1].count("fp16 n=1e6 cpu :: encode") == 1
    assert "fp16 n=1e6 cpu :: decode" not in out.split("FAIL")[1]


def test_cli_reports_new_kernels_without_failing(tmp_path, capsys):
    baseline = _write(tmp_path, "baseline.json", {"kernels": BASE})
    run = _write(tmp_path, "run.json", _bench({**BASE, "topk n=1e6 cpu :: encode": 40.0}))
    assert gate.main(["check", "--json", run, "--baseline", baseline]) == 0
    out = capsys.readouterr().out
    assert "| topk n=1e6 cpu :: encode | - | 40.00 | - | new |" in out
    assert "1 kernel(s) not in the baseline" in out


def test_check_without_a_baseline_is_a_clear_error(tmp_path):
    run = _write(tmp_path, "run.json", _bench(BASE))
    with pytest.raises(ValueError, match="no baseline"):
        gate.main(["check", "--json", run, "--baseline", str(tmp_path / "missing.json")])


def test_table_reports_multiples_of_clone_and_gbps(tmp_path, capsys):
    gate.main(["table", _write(tmp_path, "run.json", _bench(BASE, clone=1e-3))])
    out = capsys.readouterr().out
    # 4000 input bytes in 3 ms = 1.33e-3 GB/s; 3.00x clone; wire ratio 2.0.
    assert "| fp16 n=1e6 cpu | encode | 3.000 | 3.00 | 0.00 | 2.0 |" in out


@pytest.mark.slow
def test_gate_catches_an_injected_2x_slowdown_in_a_real_pass(tmp_path, capsys):
    """Two real short passes of the fp16 kernels: a baseline, then one where encode runs
    three times per round (``--bench-slowdown``; the repeats find their input in cache, so
    three, not two, to be sure of 2x). The gate must fail on exactly that kernel.
    Every clone of the size runs too: the reference is their median, and one clone alone
    moved the ratios by 25% between passes here."""
    only_fp16 = ["--pytest-args=-k 'fp16 or clone' --bench-cohort=0"]
    baseline = tmp_path / "baseline.json"
    assert gate.main(["update", "--repeat", "2", "--baseline", str(baseline), *only_fp16]) == 0
    assert any("encode" in k for k in json.loads(baseline.read_text())["kernels"])
    code = gate.main(
        [
            "check",
            "--baseline",
            str(baseline),
            "--slowdown",
            "*fp16*:: encode",
            "--retry-pause",
            "1",
            *only_fp16,
        ]
    )
    out = capsys.readouterr().out
    assert code == 1, out
    flagged = out.split("FAIL")[1]
    assert "fp16 n=1e6 cpu :: encode |" in flagged
    assert ":: decode" not in flagged
