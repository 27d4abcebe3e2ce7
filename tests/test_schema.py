"""The torch-free rules of ``fedbench.schema``: each refuses in one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedbench import schema
from fedbench.configs import compressor_names, config_dir

CONF = config_dir()
GROUPS = schema.config_groups()


def _cfg(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg.pop("hydra", None)
    return cfg


def _validate(cfg: dict) -> None:
    schema.validate(cfg, compressors=compressor_names())


def test_default_config_passes() -> None:
    _validate(_cfg())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        # seeds are mixed as 64-bit words: 2^64 would alias seed 0 under another cell hash
        (["seed=18446744073709551616"], r"^seed=18446744073709551616 is invalid: must be an integer in 0\.\.9223372036854775807$"),
        (["seed=9223372036854775808"], r"^seed=9223372036854775808 is invalid"),
        (["async_concurrency=4"], r"^async_concurrency=4 is invalid with aggregation=sync: only used with aggregation=fedbuff"),
        (["async_buffer_size=4"], r"^async_buffer_size=4 is invalid with aggregation=sync: only used with aggregation=fedbuff"),
        (["downlink=sketch"], r"^downlink='sketch' is invalid: its sketches merge on the server"),
        (["downlink=dgc"], r"^downlink='dgc' is invalid: its momentum correction and warm-up"),
        (["max_memory_gb=0"], r"^max_memory_gb=0 is invalid: must be null or > 0$"),
        (["partition=natural"], r"^partition=natural is invalid for dataset=digits"),
        (["+dataset.test_fractoin=0.5"], r"^dataset.test_fractoin=0.5 is invalid: Digits takes no such key; allowed keys: _target_, name, test_fraction, standardize$"),
        (["partition=dirichlet", "+partition.alpah=1"], r"^partition.alpah=1 is invalid: Dirichlet takes no such key; allowed keys: _target_, name, alpha$"),
        (["dataset._target_=os.system"], r"^dataset._target_='os.system' is invalid: must name a subclass of fedbench.sim.datasets.base.DataSource"),
        (["partition._target_=fedbench.sim.datasets.digits.Digits"], r"^partition._target_=.* is invalid: must name a subclass of fedbench.sim.partition.Partition"),
        (["dataset=femnist"], r"^dataset.path is missing: dataset=femnist needs LEAF's FEMNIST JSON files in dataset.path=DIR: DIR/train/\*.json"),
        (["dataset=cifar10", "dataset.path=/nonexistent"], r"^dataset.path='/nonexistent' is invalid: missing data_batch_1, .* test_batch; dataset=cifar10 needs"),
        (["compressor=eden", "compressor.bits=8.5"], r"^compressor.bits=8.5 is invalid: must be a number in \(0, 8\] \(fractional allowed\)$"),
        (["compressor=eden", "compressor.bits=0"], r"^compressor.bits=0 is invalid: must be a number in \(0, 8\]"),
        (["compressor=quant", "compressor.bits=1.5"], r"^compressor.bits=1.5 is invalid: must be an integer in 1..8 or 16$"),
    ],
)  # fmt: skip
def test_refusals_name_key_and_value(overrides: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _validate(_cfg(*overrides))


def test_what_the_new_rules_still_allow() -> None:
    _validate(_cfg(f"seed={2**63 - 1}"))
    _validate(_cfg("aggregation=fedbuff", "async_concurrency=4", "async_buffer_size=2"))
    _validate(_cfg("strategy=fedbuff"))
    _validate(_cfg("downlink=quant8", "max_memory_gb=0.5"))
    _validate(_cfg("dataset=synthetic", "partition=natural"))
    _validate(_cfg("dataset.name=my label"))  # a label for reports, not a choice
    _validate(_cfg("compressor=eden", "compressor.bits=1.5"))  # EDEN's fractional rates
    _validate(_cfg("compressor=eden05"))


@pytest.mark.parametrize(
    "arg",
    [
        "compressor=null",
        "dataset=NULL",
        "compressor=none,null",
        "+model=null",
        "network=",
        "hydra/launcher=null",
    ],
)
def test_null_group_override_is_refused(arg: str) -> None:
    group = arg.lstrip("+").split("=")[0]
    with pytest.raises(ValueError, match=rf"^{group}=.* is invalid: must name a config"):
        schema.check_overrides([arg], GROUPS)


def test_config_groups_are_the_conf_folders() -> None:
    assert {"compressor", "dataset", "model", "hydra/launcher", "experiment"} <= set(GROUPS)
    assert not any("__" in g for g in GROUPS)


def test_ordinary_overrides_pass_check_overrides() -> None:
    schema.check_overrides(
        ["compressor=none", "-m", "compressor=quant,topk", "seed=null", "local_steps=null"], GROUPS
    )


def test_null_group_override_is_what_hydra_cannot_compose() -> None:
    # The rule exists because Hydra fails here with a bare traceback, not a clean message.
    with pytest.raises(ValueError, match="Config group override must be a string"):
        _cfg("compressor=null")


# -- npz --------------------------------------------------------------------------------
def _save(tmp_path: Path, name: str = "d.npz", **arrays) -> Path:
    base = {
        "X_train": np.random.default_rng(0).normal(size=(20, 4)),
        "y_train": np.arange(20) % 3,
        "X_test": np.zeros((6, 4)),
        "y_test": np.arange(6) % 3,
    }
    base.update(arrays)
    path = tmp_path / name
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def test_npz_label_bound_and_uint64(tmp_path: Path) -> None:
    assert schema.inspect_npz(_save(tmp_path)).num_classes == 3
    u64 = (np.arange(20) % 3).astype(np.uint64)
    info = schema.inspect_npz(_save(tmp_path, y_train=u64, y_test=u64[:6]))
    assert info.num_classes == 3
    big = np.arange(20) % 3
    big[0] = 1_000_000_000
    with pytest.raises(
        ValueError,
        match=r"^dataset npz y_train: labels must be 0\.\.N-1 with N <= 100000; got max 1000000000$",
    ):
        schema.inspect_npz(_save(tmp_path, y_train=big))
    huge = u64.copy()
    huge[0] = 2**64 - 1
    with pytest.raises(ValueError, match=r"got max 18446744073709551615$"):
        schema.inspect_npz(_save(tmp_path, y_train=huge))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"y_train": (np.arange(20) % 3).astype(float)}, r"y_train: .*dtype float64 is invalid: must be 1-D integers"),
        ({"X_train": np.ones((20, 4)) * 1j}, r"X_train: .*complex128 is invalid: must be real numbers"),
        ({"y_test": np.array([0, 1, 2, 0, 1, 7])}, r"y_test: class\(es\) \[7\] never appear in y_train"),
        ({"X_test": np.zeros((6, 5))}, r"X_test: feature shape"),
        ({"y_train": None}, r"missing array.*y_train"),
    ],
)  # fmt: skip
def test_npz_content_refusals(tmp_path: Path, arrays: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        schema.inspect_npz(_save(tmp_path, **arrays))


def _corrupt(path: Path, array: np.ndarray) -> None:
    raw = path.read_bytes()
    at = raw.index(array.tobytes())
    path.write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :])


def test_npz_bad_crc_and_npy_are_one_line_errors_naming_the_path(tmp_path: Path) -> None:
    y = (np.arange(20) % 3).astype(np.int64)
    path = _save(tmp_path, y_train=y)
    _corrupt(path, y)
    with pytest.raises(
        ValueError,
        match=r"^dataset.path='.*d.npz' is invalid: not a readable .npz file: y_train: BadZipFile: Bad CRC-32",
    ):
        schema.inspect_npz(path)  # fmt: skip
    npy = tmp_path / "d.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(
        ValueError,
        match=r"^dataset.path='.*d.npy' is invalid: not a readable .npz file: a single array",
    ):
        schema.inspect_npz(npy)  # fmt: skip
    with pytest.raises(ValueError, match=r"^dataset.path=.* is invalid: no such file$"):
        schema.inspect_npz(tmp_path / "nope.npz")


def test_npz_refusal_comes_before_torch_is_imported(tmp_path: Path) -> None:
    big = np.arange(20) % 3
    big[0] = 1_000_000_000
    path = _save(tmp_path, y_train=big)
    code = f"""
import sys
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from fedbench import schema
from fedbench.configs import config_dir
with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
    cfg = compose("config", overrides=["dataset=npz", "dataset.path={path}"])
cfg = OmegaConf.to_container(cfg, resolve=True)
try:
    schema.validate(cfg)
except ValueError as e:
    assert "got max 1000000000" in str(e), e
else:
    raise SystemExit("not refused")
assert "torch" not in sys.modules, "torch was imported"
for over in (["dataset=synthetic", "partition=natural", "num_clients=100000", "max_memory_gb=1"],
             ["seed=18446744073709551616"], ["downlink=sketch"], ["dataset=femnist"],
             ["+dataset.test_fractoin=0.5"], ["dataset=cifar100", "dataset.path=/nope"]):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", overrides=over), resolve=True)
    try:
        schema.validate(cfg)
    except ValueError:
        pass
    else:
        raise SystemExit(f"not refused: {{over}}")
assert "torch" not in sys.modules, "torch was imported"
with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
    cfg = compose("config", overrides=["dataset=shakespeare_small", "partition=natural"])
schema.validate(OmegaConf.to_container(cfg, resolve=True))  # builds the data source
assert "torch" not in sys.modules, "torch was imported"
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]


def test_a_users_codec_is_not_held_to_the_built_ins_knob_rules() -> None:
    """`bits=12` is out of range for fedbench's quant, not for a user's own codec."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fedbench.configs import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config", ["compressor=quant"]), resolve=True)
    cfg["compressor"]["bits"] = 12
    with pytest.raises(ValueError, match=r"compressor.bits=12 is invalid"):
        schema.validate(cfg)
    cfg["compressor"]["_target_"] = "mypkg.codecs.TwelveBit"
    schema.validate(cfg)  # its constructor checks its own values
