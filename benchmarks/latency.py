"""Latency working points: is a factorized model at a Table 1 ratio slower or faster than dense, end to end?

For a space (default MobileNetV2, random weights: a time does not depend on the values), on each runtime
(torch eager on --device, onnxruntime on the CPU) at --batch: the per-layer timing table is measured once
(``ranksearch.core.measure_layers``, what ``search --latency`` stores in its study); then at each of the
space's working points two allocations of the CE1 seed rule (one MSE bound hitting the ratio) are built:

* ``rule``: the seed rule alone (what ranksearch searched before latency working points);
* ``latency 1.0``: the seed rule within the timing table (``--ratio R --latency 1.0``: each layer only at
  ranks whose pair runs faster than its dense layer, the layers together no slower than dense): the
  allocation a latency study enqueues first; every trial of such a study keeps to the same limits.

The dense model and both allocations run side by side (one run of each per round, medians over the
rounds), so a change in the machine's load hits them alike. Writes its section to benchmarks/LOG.md.

    python benchmarks/latency.py --space mobilenet_v2 --runtimes onnxruntime,torch --threads 2
    python benchmarks/latency.py --space mobilenet_v2 --runtimes torch --device cuda --batch 32   # a GPU session
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import time
from pathlib import Path

import torch
from _report import publish  # benchmarks/_report.py (scripts run from the repository root)

INPUT_SHAPES = {"resnet50": (3, 224, 224), "vgg16": (3, 224, 224), "mobilenet_v2": (3, 224, 224)}


def _power_law(model: torch.nn.Module, alpha: float, rms: float) -> None:
    """Give each eligible layer's weight a per-element RMS of ``rms`` and singular values decaying as
    ``k**-alpha`` (same singular vectors). As initialized, the classifier's weights are 100x smaller than
    the convolutions' and the spectra flat, and one MSE bound then cuts the classifier alone; with trained
    weights the rule spreads the cut over many layers, as it does here (32-34 of 36 layers at Table 1's points)."""
    from ranksearch.core import find_layers

    with torch.no_grad():
        for module in find_layers(model).eligible.values():
            w = module.weight
            if isinstance(module, torch.nn.ConvTranspose2d):  # (in, out, kh, kw): not MobileNetV2's
                continue
            mat = w.reshape(w.shape[0], -1)  # out x (in * kernel), the matrix ranksearch factorizes
            m, n = mat.shape
            u, s, vh = torch.linalg.svd(mat, full_matrices=False)
            decay = torch.arange(1, len(s) + 1, dtype=s.dtype) ** -alpha
            decay *= rms * (m * n) ** 0.5 / decay.norm()
            w.copy_(((u * decay) @ vh).reshape(w.shape))


def _rows(space_name: str, runtime: str, args: argparse.Namespace) -> tuple[list[str], dict[str, float]]:
    from ranksearch import count_params, factorize, load_space
    from ranksearch.core import (
        CPU_BLOCK,
        find_layers,
        layer_factors,
        measure_layers,
        measure_models,
        rank_multiple_for,
        solve_ratio,
        spectra,
        timing_ranks,
    )

    space = load_space(space_name)
    torch.manual_seed(0)
    device = torch.device("cpu" if runtime == "onnxruntime" else args.device)
    dense = space.build_architecture().eval()
    _power_law(dense, args.alpha, args.rms)
    dense = dense.to(device)
    shape = INPUT_SHAPES.get(space_name) or tuple(space.build_task().train[0][0].shape)
    x = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    curves = spectra(dense, exclude=space.exclude)
    layers = find_layers(dense).eligible
    modules = {n: layers[n] for n in curves}
    space_grid = space.rank_multiple if isinstance(space.rank_multiple, int) else 1
    total = count_params(dense)
    # what --latency resolves rank_multiple auto to on this device (8 on the CPU: the blocked kernels' channel block)
    grid = args.grid or rank_multiple_for(device, space_grid, curves, min(space.working_points), total, space.min_rank,
                                          CPU_BLOCK if device.type == "cpu" else None)
    t0 = time.perf_counter()
    table = measure_layers(dense, modules, {n: timing_ranks(c, grid, space.min_rank) for n, c in curves.items()}, x, runtime,
                           repeats=args.repeats)
    table_s = time.perf_counter() - t0
    limits = table.limits(curves)
    capped = {n: dataclasses.replace(c, limit=limits[n]) for n, c in curves.items()}
    factors = layer_factors(modules, {n: max(1, c.max_rank) for n, c in curves.items()})
    rows, loads = [], {"before": os.getloadavg()[0]}

    def pairs(sol: object) -> int:
        return sum(v is not None for v in sol.ranks.values())  # type: ignore[attr-defined]

    for wp in space.working_points:
        rule = solve_ratio(curves, wp, total, None, space_grid, space.min_rank)
        rule_grid = solve_ratio(curves, wp, total, None, grid, space.min_rank)
        try:
            kept = solve_ratio(capped, wp, total, None, grid, space.min_rank, latency=table.latency(capped, 1.0))
        except Exception as e:  # a ratio the faster pairs cannot reach: said in the row
            rows.append(f"| {space_name} | {runtime} | {args.batch} | {wp:g} | unreachable within the table: {str(e)[:100]} |")
            continue
        sols = (rule, rule_grid, kept)
        models = [dense, *(factorize(dense, {n: r for n, r in s.ranks.items() if r is not None}, factors).eval().to(device) for s in sols)]
        d, *t = measure_models(models, x, runtime, repeats=args.rounds)
        cells = " | ".join(f"{v / d:.3f} ({pairs(s)} pairs, {s.ratio:.4f})" for v, s in zip(t, sols))
        rows.append(f"| {space_name} | {runtime} | {args.batch} | {wp:g} | {d * 1e3:.3f} | {cells} | {table.predicted(kept.ranks) / table.model:.3f} |")
        print(rows[-1], flush=True)
    loads["after"] = os.getloadavg()[0]
    slow = sum(v == 0 for v in limits.values())
    meta = {"table_s": table_s, "layers": len(curves), "no_faster_pair": slow, "grid": grid, "space_grid": space_grid, **loads}
    return rows, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="mobilenet_v2")
    ap.add_argument("--runtimes", default="onnxruntime,torch", help="comma-separated: onnxruntime, torch, torch-compile")
    ap.add_argument("--device", default="cpu", help="torch runtimes' device (cuda in a GPU session)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--grid", type=int, default=0, help="ranks are multiples of this (0: the space's)")
    ap.add_argument("--alpha", type=float, default=0.5, help="singular values of the random weights decay as k**-alpha")
    ap.add_argument("--rms", type=float, default=0.05, help="per-element RMS of every eligible layer's random weight")
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds per layer variant in the timing table")
    ap.add_argument("--rounds", type=int, default=40, help="timed rounds of the whole models (median)")
    ap.add_argument("--threads", type=int, default=2, help="torch's and onnxruntime's intra-op threads")
    ap.add_argument("--out", default=str(Path(__file__).with_name("LOG.md")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    load_start, start = os.getloadavg()[0], time.time()
    rows, metas = [], {}
    for runtime in args.runtimes.split(","):
        r, metas[runtime] = _rows(args.space, runtime, args)
        rows += r
    load_end = os.getloadavg()[0]
    cmd = (f"python benchmarks/latency.py --space {args.space} --runtimes {args.runtimes} --device {args.device} --batch {args.batch} --grid {args.grid} "
           f"--alpha {args.alpha:g} --rms {args.rms:g} --repeats {args.repeats} --rounds {args.rounds} --threads {args.threads}")
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else None
    lines = [
        f"## Latency working points ({args.space}, {args.runtimes}, {args.device}, batch {args.batch}): end to end against dense "
        f"({datetime.date.today()})",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores{f', {gpu}' if gpu else ''}; torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, {args.threads} intra-op threads. 1-minute load {load_start:.2f} at the start, {load_end:.2f} at the end "
        f"({time.time() - start:.0f} s).  ",
        f"Weights: random (the space's architecture), each eligible layer's singular values set to decay as k^-{args.alpha:g} with a "
        f"per-element RMS of {args.rms:g} (as initialized, one MSE bound cuts the classifier alone; here it spreads the cut over "
        "most layers, as on trained weights). Each row: the dense model and two seed-rule allocations at the ratio, "
        "timed side by side (medians of the rounds). `rule`: the seed rule alone on the space's rank grid (what "
        "ranksearch searched before latency working points); `rule on the latency grid`: the same on the grid `--latency` "
        "resolves `auto` to; `latency 1.0`: the seed rule within the timing table on that grid (`--ratio R --latency 1.0`: the "
        "allocation a latency study enqueues first; its other trials keep to the same limits). Predicted: the table's estimate "
        "of `latency 1.0` from layers timed alone (not calibrated in place, as a search's table is).",
        "",
        "| space | runtime | batch | ratio | dense ms | rule / dense (pairs, ratio) | rule on the latency grid / dense | latency 1.0 / dense | "
        "predicted |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *(f"- {rt}: rank grid {m['space_grid']} (the space's) and {m['grid']} (latency); timing table {m['table_s']:.1f} s for {m['layers']} layers ({m['no_faster_pair']} without a faster pair: kept dense); "
          f"load {m['before']:.2f} before the models' rounds, {m['after']:.2f} after" for rt, m in metas.items()),
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
