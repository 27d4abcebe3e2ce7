"""The distributed-mean-estimation (DME) leaderboard: every codec, bits per coordinate vs NMSE.

``python benchmarks/dme.py --out DIR [--quick]`` builds every config in conf/compressor
(without error feedback: DME measures one round), lets n clients encode their own
vector with independent generators, decodes and averages on the server, and records:

- ``bits_per_coord`` = total message bytes x 8 / (n d), headers included;
- ``nmse`` = ||mean_hat - mean||^2 / ((1/n) sum_i ||x_i||^2), mean and spread over seeds;
- ``time_x_clone`` = encode + decode seconds / the seconds of ``x.clone()`` in the same run;
- for ``+zstd`` / ``+ans`` rows (entropy-coded messages), ``entropy_bits_per_coord``: the
  order-0 empirical entropy of the codec's own symbols (QSGD's signed levels,
  TernGrad's ternary values, top-k's position gaps) plus their side information
  (:func:`symbol_entropy_bits`), the bound a symbol-by-symbol coder meets.

Writes ``dme.csv``, ``dme.md`` (best seed-mean NMSE first within each bit budget) and
``dme_pareto.png`` (NMSE vs bits, log y: one line a family, its Pareto front over every
codec and setting of the family; entropy-coded rows as a dashed line of their own) into DIR. Codecs that
need server-side aggregation (the count sketch) are skipped and listed in dme.md.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import time
from pathlib import Path

import torch

from fedbench.compress import available, build
from fedbench.compress.entropy import Entropy, empirical_entropy_bits

SERVER_AGGREGATED = {
    "sketch": "merged and unsketched on the server (FetchSGD)",
    "majority_vote": "aggregated by the sign of the clients' vote, not by a mean",
}
ENTROPY_CODED = ("qsgd", "terngrad", "topk", "qsgd4")
# Settings beside the shipped configs: EDEN's fractional rates (EDEN, Sec. 5).
EXTRA = {f"eden{b:g}": ("eden", {"bits": b}) for b in (0.25, 1.5, 2.5, 3.5)}
# The grid of the committed report (reports/codecs/): ~4 minutes on one CPU thread.
FULL = {
    1: (2**10, 2**14, 2**18, 2**20),
    10: (2**10, 2**14, 2**18, 2**20),
    100: (2**10, 2**14, 2**16),
}
# Configs that are another config under a second name (same class, same parameters).
ALIASES = {
    "powersgd4": "powersgd",
    "quant8": "quant",
    "randk1": "randk",
    "topk1": "topk",
    "qsgd_ans": "qsgd+ans",
}
QUICK = {1: (2**10,), 10: (2**10,)}


# Real updates: what n clients of a fedbench run send in one round (the flattened model
# change after local training), for the tutorial's MLP on digits and the character LSTM on
# Shakespeare (the CPU-sized preset). d is the model's size.
REAL = {
    "mlp_updates": ["num_clients=100", "clients_per_round=100", "local_epochs=1"],
    "lstm_updates": [
        "+experiment=shakespeare", "clients_per_round=100", "local_steps=5", "eval_every=1",
    ],
}  # fmt: skip
_REAL_CACHE: dict[tuple[str, int], torch.Tensor] = {}


def real_updates(kind: str, n: int, seed: int) -> torch.Tensor:
    """(n, d) real client updates of round 2 of a short run (``REAL[kind]``, ``seed``)."""
    key = (kind, seed)
    if key not in _REAL_CACHE:
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf

        from fedbench.configs import config_dir
        from fedbench.sim.simulation import Simulation

        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=[*REAL[kind], f"seed={seed}", "rounds=2"])
        cfg = OmegaConf.to_container(cfg, resolve=True)
        cfg.pop("hydra", None)
        sim = Simulation(cfg)
        sim.round(1)  # past the first step, where every update is the same direction
        ids = sim.sample(2)
        start, _, _ = sim.broadcast(ids, 2)
        _, deltas = sim.train_cohort(ids, start, 2)
        _REAL_CACHE[key] = torch.cat([d.flatten(1) for d in deltas], 1).float()
    return _REAL_CACHE[key][:n]


def vectors(dist: str, n: int, d: int, seed: int) -> torch.Tensor:
    """(n, d) client vectors: Gaussian, or log-normal (heavy tails) with random signs, or
    real updates (``REAL``; d is then the model's size)."""
    if dist in REAL:
        return real_updates(dist, n, seed)
    g = torch.Generator().manual_seed(seed)
    if dist == "gaussian":
        return torch.randn(n, d, generator=g)
    mag = torch.randn(n, d, generator=g).mul_(1.5).exp_()
    return torch.where(torch.rand(n, d, generator=g) < 0.5, -mag, mag)


def clone_seconds(x: torch.Tensor, reps: int = 15) -> float:
    """Median seconds of ``x.clone()`` (the median: a shared machine makes minima flatter)."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        x.clone()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(codec, x: torch.Tensor, seed: int) -> dict:
    """One DME trial: encode each client with its own generator, decode, average."""
    n, d = x.shape
    gens = [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in range(n)]
    states = [codec.init_state((d,)) for _ in range(n)]
    t0 = time.perf_counter()
    msgs = codec.encode_batch(x, gens, states)
    t1 = time.perf_counter()
    decoded = codec.decode_batch(msgs)
    t2 = time.perf_counter()
    mean = x.double().mean(0)
    err = float((decoded.double().mean(0) - mean).square().sum())
    norm = float(x.double().square().sum(1).mean())
    row = {
        "bits_per_coord": sum(len(m) for m in msgs) * 8 / (n * d),
        "nmse": err / norm if norm > 0 else 0.0,
        "seconds": (t1 - t0) + (t2 - t1),
    }
    if isinstance(codec, Entropy):
        bound = symbol_entropy_bits(codec.inner, x, decoded)
        if bound is not None:
            row["entropy_bits_per_coord"] = bound / (n * d)
    return row


def symbol_entropy_bits(inner, x: torch.Tensor, decoded: torch.Tensor) -> float | None:
    """Bits an ideal order-0 coder of the codec's own symbols needs for the whole cohort,
    side information included (None for a codec without a model here):

    - qsgd: the signed levels ``round(decoded * s / norm_b)`` of every value, plus one
      fp32 norm per bucket;
    - terngrad: the ternary values ``round(decoded / max_b |x|)``, plus one fp32 scale a
      bucket;
    - topk: the gaps between kept positions, plus 32 bits a kept (fp32) value.

    Each client's symbols are modelled on their own (its message carries its table).
    """
    d = x.shape[1]
    total = 0.0
    for xi, vi in zip(x.double(), decoded.double(), strict=True):
        if inner.name in ("qsgd", "terngrad"):
            size = inner.bucket_size or d
            pad = (-d) % size
            xb = torch.nn.functional.pad(xi, (0, pad)).view(-1, size)
            vb = torch.nn.functional.pad(vi, (0, pad)).view(-1, size)
            if inner.name == "qsgd":
                unit = xb.norm(dim=1, keepdim=True).float().double() / inner.levels
            else:
                unit = xb.abs().amax(dim=1, keepdim=True).float().double()
            sym = torch.where(unit > 0, vb / unit.clamp_min(1e-300), 0.0).round()
            total += empirical_entropy_bits(sym.flatten()[:d]) + 32 * xb.shape[0]
        elif inner.name == "topk":
            pos = torch.nonzero(vi).flatten()
            gaps = torch.diff(pos, prepend=torch.tensor([-1]))
            total += empirical_entropy_bits(gaps) + 32 * len(pos)
        else:
            return None
    return total


def codecs() -> tuple[dict, dict]:
    """{label: codec} for every config (and the +zstd rows), {skipped name: why}."""
    out, skipped = {}, {}
    for name in available():
        if name in ALIASES:
            continue
        if name in SERVER_AGGREGATED:
            skipped[name] = SERVER_AGGREGATED[name]
            continue
        try:
            out[name] = build(name, error_feedback=False)
        except ValueError as e:
            skipped[name] = str(e)
    for label, (name, params) in EXTRA.items():
        out[label] = build(name, error_feedback=False, **params)
    for coder in ("zstd", "ans"):
        try:
            for name in ENTROPY_CODED:
                if name in out:
                    out[f"{name}+{coder}"] = Entropy(out[name], coder)
        except ValueError as e:  # zstandard or constriction missing
            skipped[f"+{coder}"] = str(e)
    return out, skipped


def family(label: str, codec) -> str:
    """The series a row is drawn in: the codec's own name (``eden4`` -> ``eden``), with
    the entropy coder's suffix (``qsgd+ans``), so each line of the figure is one codec."""
    inner = getattr(codec, "inner", codec)
    coder = f"+{codec.coder}" if isinstance(codec, Entropy) else ""
    return f"{inner.name}{coder}"


def run(out_dir: Path, quick: bool, seeds: int = 3, only: list[str] | None = None) -> list[dict]:
    torch.manual_seed(0)
    grid = QUICK if quick else FULL
    table, skipped = codecs()
    if only:
        table = {k: v for k, v in table.items() if k in only}
    rows = []
    dists = ("gaussian",) if quick else ("gaussian", "lognormal", *REAL)
    for dist in dists:
        for n, dims in grid.items():
            for d in (0,) if dist in REAL else dims:  # real updates: the model's size
                xs = [vectors(dist, n, d, s) for s in range(seeds)]
                base = clone_seconds(xs[0])
                for label, codec in table.items():
                    measure(codec, xs[0][:1], seeds)  # warm-up: caches, first-call costs
                    trials = [measure(codec, xs[s], s) for s in range(seeds)]
                    nm = [t["nmse"] for t in trials]
                    row = {
                        "codec": label,
                        "family": family(label, codec),
                        "strategy": codec.family,
                        "dist": dist,
                        "n": n,
                        "d": xs[0].shape[1],
                        "bits_per_coord": trials[0]["bits_per_coord"],
                        "nmse": statistics.fmean(nm),
                        "nmse_std": statistics.stdev(nm) if len(nm) > 1 else 0.0,
                        "time_x_clone": statistics.median(t["seconds"] for t in trials) / base,
                        "entropy_bits_per_coord": trials[0].get("entropy_bits_per_coord", ""),
                    }
                    rows.append(row)
    write(out_dir, rows, skipped)
    return rows


def write(out_dir: Path, rows: list[dict], skipped: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "dme.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["# DME leaderboard", ""]
    for (dist, n, d), group in _groups(rows).items():
        lines += [f"## {dist}, n = {n}, d = {d}", ""]
        lines += [
            "| codec | bits/coord | NMSE (mean ± std, 3 seeds) | time / clone | entropy bits/coord |"
        ]
        lines += ["|---|---:|---:|---:|---:|"]
        for r in sorted(group, key=lambda r: (r["bits_per_coord"], r["nmse"])):
            ent = f"{r['entropy_bits_per_coord']:.3f}" if r["entropy_bits_per_coord"] != "" else ""
            lines.append(
                f"| {r['codec']} | {r['bits_per_coord']:.3f} | {r['nmse']:.3g} ± {r['nmse_std']:.2g}"
                f" | {r['time_x_clone']:.1f} | {ent} |"
            )
        lines.append("")
    if skipped:
        lines += ["Skipped:", ""] + [f"- `{k}`: {v}" for k, v in skipped.items()]
    (out_dir / "dme.md").write_text("\n".join(lines) + "\n")
    _plot(out_dir / "dme_pareto.png", rows)


def _groups(rows):
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["dist"], r["n"], r["d"]), []).append(r)
    return groups


def pareto(rows: list[dict]) -> list[dict]:
    """The rows (sorted by bits) whose NMSE is below that of every cheaper row."""
    front, best = [], math.inf
    for r in rows:
        if r["nmse"] < best:
            front.append(r)
            best = r["nmse"]
    return front


def _plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(rows)
    key = max(groups, key=lambda k: (k[0] == "gaussian", k[1] == 10, k[2]))
    fams: dict = {}
    for r in groups[key]:
        if r["nmse"] > 0:
            coded = " + entropy coding" if "+" in r["family"] else ""
            fams.setdefault(f"{r['strategy'] or 'other'}{coded}", []).append(r)
    fig, ax = plt.subplots(figsize=(11, 6.5))
    bases = sorted({f.split(" +")[0] for f in fams})
    colours = dict(zip(bases, plt.get_cmap("tab10").colors[: len(bases)], strict=True))
    for fam, rs in sorted(fams.items()):
        rs.sort(key=lambda r: (r["bits_per_coord"], r["nmse"]))
        colour = colours[fam.split(" +")[0]]
        dashed = "entropy" in fam
        ax.scatter(
            [r["bits_per_coord"] for r in rs],
            [r["nmse"] for r in rs],
            color=colour,
            alpha=0.35,
            s=14,
            marker="x" if dashed else "o",
        )
        front = pareto(rs)  # the line joins the settings no cheaper setting of the family beats
        ax.plot(
            [r["bits_per_coord"] for r in front],
            [r["nmse"] for r in front],
            "--" if dashed else "-",
            marker="x" if dashed else "o",
            color=colour,
            label=fam,
        )
        for r in front:
            ax.annotate(
                r["codec"],
                (r["bits_per_coord"], r["nmse"]),
                fontsize=6,
                color=colour,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("bits per coordinate (measured, headers included)")
    ax.set_ylabel("NMSE of the mean")
    ax.set_title(
        f"DME: {key[0]}, n = {key[1]}, d = {key[2]}: one line a family, its Pareto front "
        "(labelled); faint points: the family's other settings; NMSE 0 not shown",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", type=Path, required=True, help="folder for dme.csv, dme.md, dme_pareto.png"
    )
    p.add_argument("--quick", action="store_true", help="d = 2^10, n in 1, 10, Gaussian only")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--only", nargs="*", help="codec labels to run (default: all)")
    a = p.parse_args(argv)
    run(a.out, a.quick, a.seeds, a.only)


if __name__ == "__main__":
    main()
