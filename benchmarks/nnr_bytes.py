"""Are NNR bytes additive over layers? Groundwork for byte working points (issue 27, part 1).

A byte working point needs the size of the whole model's bitstream for any allocation of ranks (and, later,
of quantization parameters). If the stream of a model is the sum of its layers' streams, less a constant per
stream header, a per-layer byte table measured once predicts any allocation's stream, as the timing table
predicts its latency. For each space: the dense model and the CE1 rule at each working point, at three qps,
encoded whole by NNCodec and layer by layer (each module with parameters alone; each pair as one module);
the table gives both sizes, their ratio, and the seconds an encode takes. Writes its section to LOG.md.

    python benchmarks/nnr_bytes.py --spaces mnist5k-cnn,dcase-audio --qps -38,-30,-46
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import time
from pathlib import Path

import torch
from _report import publish  # benchmarks/_report.py (scripts run from the repository root)


def _layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The modules that hold parameters of their own, a low-rank pair counted as one."""
    from ranksearch.core import LowRank

    pairs = [n for n, m in model.named_modules() if isinstance(m, LowRank)]
    out = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in pairs):
            continue
        if isinstance(m, LowRank) or list(m.parameters(recurse=False)):
            out.append((name, m))
    return out


def _sizes(model: torch.nn.Module, qp: int) -> tuple[int, int, int, float]:
    from ranksearch.results import encode_nnr

    start = time.perf_counter()
    whole = len(encode_nnr(model, qp=qp))
    seconds = time.perf_counter() - start
    layers = _layers(model)
    parts = sum(len(encode_nnr(torch.nn.Sequential(collections.OrderedDict([(n.replace(".", "_") or "m", m)])), qp=qp))
                for n, m in layers)
    return whole, parts, len(layers), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", default="mnist5k-cnn,dcase-audio")
    ap.add_argument("--qps", default="-38,-30,-46")
    ap.add_argument("--out", default=str(Path(__file__).with_name("LOG.md")))
    args = ap.parse_args()
    from ranksearch import apply, load_space, solve
    from ranksearch.spaces import cache_root

    load_start, start = os.getloadavg()[0], time.time()
    rows = []
    qps = [int(q) for q in args.qps.split(",")]
    for name in args.spaces.split(","):
        space = load_space(name)
        task = space.build_task()
        dense = space.build_model(task)
        models = {"dense": dense}
        for wp in space.working_points:
            cfg = solve(dense, wp, exclude=space.exclude, rank_multiple=space.rank_multiple, min_rank=space.min_rank,
                        cache_dir=cache_root() / "spectra")
            models[f"rule {wp:g}"] = apply(dense, cfg)
        for label, model in models.items():
            for qp in qps:
                whole, parts, n, seconds = _sizes(model.eval(), qp)
                rows.append(f"| {name} | {label} | {qp} | {n} | {whole:,} | {parts:,} | {parts - whole:+,} | {parts / whole:.4f} | {seconds:.2f} |")
                print(rows[-1], flush=True)
    cmd = f"python benchmarks/nnr_bytes.py --spaces {args.spaces} --qps {args.qps}"
    lines = [
        f"## NNR bytes, whole model against the sum of its layers ({args.spaces}) ({datetime.date.today()})",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores. 1-minute load {load_start:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end ({time.time() - start:.0f} s).  ",
        "Each model encoded by NNCodec (`ranksearch.results.encode_nnr`) whole, and layer by layer (each module with parameters "
        "alone, a low-rank pair as one module). The difference is what the extra streams' headers add.",
        "",
        "| space | model | qp | layers | whole (B) | sum of layers (B) | difference (B) | ratio | encode whole (s) |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
