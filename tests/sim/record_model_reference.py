"""Record this machine's set in ``model_reference.json`` (not a test: run it by hand).

Run with the code *before* the models refactor on the path, so the set is that code's
numbers on this machine::

    git worktree add /tmp/ref 29d801b
    PYTHONPATH=/tmp/ref python tests/sim/record_model_reference.py "<label of this machine>"

``test_mlp_and_logreg_train_bit_for_bit_as_before`` then checks that the current code
reproduces one of the recorded sets bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import fedbench
from fedbench.compress import config_dir
from fedbench.sim.engine import Simulation

sys.path.insert(0, str(Path(__file__).parent))
from conftest import SMALL  # the tests' own small config

PATH = Path(__file__).parent / "model_reference.json"


def record(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[*SMALL, *overrides])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg.pop("hydra", None)
    sim = Simulation(cfg)
    for r in (1, 2):
        sim.round(r)
    return {
        "overrides": overrides,
        "sha256": [
            hashlib.sha256(p.contiguous().numpy().tobytes()).hexdigest() for p in sim.params
        ],
        "shapes": [list(p.shape) for p in sim.params],
        "accuracy": sim.evaluate()[0],
    }


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: record_model_reference.py '<label of this machine>'")
    print(f"recording with {fedbench.__file__}", file=sys.stderr)
    torch.set_num_threads(1)
    ref = json.loads(PATH.read_text())
    cases = next(iter(ref["sets"].values()))
    ref["sets"][sys.argv[1]] = {name: record(c["overrides"]) for name, c in cases.items()}
    PATH.write_text(json.dumps(ref, indent=1) + "\n")


if __name__ == "__main__":
    main()
