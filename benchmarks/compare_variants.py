"""Search variants side by side, from the ``--raw`` files of ``benchmarks/quality.py`` runs.

Each raw file holds the studies of one quality run; the variants are compared on the (space,
working point, seed) cases they all ran, with 48 trials (``new`` studies only). Cells: median over
those seeds of the search's pick on the test split, the best sampled trial's, the trials retrained
fully and the wall time per study. Writes its section to benchmarks/LOG.md.

    python benchmarks/compare_variants.py --raw defaults=/tmp/m1.json,incumbent-cmaes=/tmp/v_cmaes.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
from pathlib import Path

from _report import publish  # benchmarks/_report.py (scripts run from the repository root)
from quality import _figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", required=True, help="comma list of LABEL=FILE[+FILE...] (quality.py --raw files)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("LOG.md")))
    args = ap.parse_args()
    runs = {}
    for item in args.raw.split(","):
        label, _, paths = item.partition("=")
        runs[label] = {(r["space"], r["wp"], r["seed"]): r for path in paths.split("+")
                       for r in json.loads(Path(path).read_text()) if r["variant"] == "new"}
    common = set.intersection(*(set(r) for r in runs.values()))
    cases = sorted({(s, w) for s, w, _ in common}, key=lambda k: (k[0], -k[1]))
    seeds = sorted({seed for _, _, seed in common})
    lines = [
        f"## Search variants at 48 trials, the gate for all ({', '.join(runs)}) ({datetime.date.today()})",
        "",
        f"Command: `python benchmarks/compare_variants.py --raw {args.raw}` (the raw files of the quality runs named "
        f"in this section's text).  ",
        f"Cells: median over seeds {seeds} of the search's pick on the test split (the best sampled trial's in brackets); "
        "full = trials retrained fully; wall = seconds per study. Settings per variant: "
        + "; ".join(f"{label}: " + str({k: next(iter(r.values()))["settings"][k] for k in ("proposals", "sampler", "prior", "pruner")})
                    for label, r in runs.items()) + ".",
        "",
        "| space | WP | " + " | ".join(runs) + " |",
        "|---|---|" + "---|" * len(runs),
    ]
    for space, wp in cases:
        cells = []
        for r in runs.values():
            figs = [_figures(r[(space, wp, seed)]) for seed in seeds if (space, wp, seed) in common]
            med = {k: statistics.median(f[k] for f in figs) for k in ("pick", "sampled", "full", "wall")}
            cells.append(f"{med['pick']:.4f} ({med['sampled']:.4f}), full {med['full']:.0f}, {med['wall']:.0f} s")
        lines.append(f"| {space} | {wp} | " + " | ".join(cells) + " |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
