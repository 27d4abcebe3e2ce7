"""``python -m fedbench.report DIR... [--out OUT] [--bench BENCH.json]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Build the report of the runs under the given folders; print where it went."""
    parser = argparse.ArgumentParser(
        prog="python -m fedbench.report",
        description="Tables and figures from fedbench run folders (sweeps or the store).",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="folders searched for run folders")
    parser.add_argument("--out", type=Path, default=None, help="output folder (DIR/report)")
    parser.add_argument("--bench", type=Path, default=None, help="pytest-benchmark JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from fedbench.report import build_report

    try:
        md = build_report(args.dirs, args.out, args.bench)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    sys.stdout.write(f"{md}\n{md.with_suffix('.html')}\n")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # one line, not a traceback; the report was not written
        sys.stderr.write("\ninterrupted\n")
        raise SystemExit(130) from None
