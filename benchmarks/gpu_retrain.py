"""Training throughput (images/s) of dense vs factorized ResNet50, VGG16 and MobileNetV2, eager and compiled.

For each model, at every working point of its space (``search_spaces/<model>.yaml``) and each rank
multiple, the factorized model takes the CE1 seed rule's ranks (``solve``: one MSE bound); each is
timed in eager mode and through ``torch.compile`` exactly as the built-in retrain compiles it
(:func:`ranksearch.core.compile_for_training`), against the dense model in the same mode. A training
step loop on synthetic tensors (no data loading): SGD, and on CUDA the retrain's bf16 autocast and
channels-last, no host synchronization inside the timed loop; on CPU fp32 and contiguous, as ``fit``
trains there. Figures: medians over ``--repeats`` runs of ``--steps`` steps after ``--warmup`` steps (the
first compiled call, the compilation, is timed apart and reported in seconds).

    python benchmarks/gpu_retrain.py --device cuda --batch 128 --size 224                   # a GPU
    python benchmarks/gpu_retrain.py --device cpu --batch 8 --size 64 --compile-wps 0.25,0.2,0.7

Weights are random (torchvision's initialization, seed 0): throughput depends on the shapes only.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from _report import publish  # benchmarks/_report.py (scripts run from the repository root)
from torch import nn

from ranksearch.core import compile_for_training, count_params, factorize, find_layers, layer_factors, solve
from ranksearch.spaces import cache_root, load_space

MODES = ("eager", "compiled")


@dataclass
class Timing:
    """Median images/s over the repeats, and the seconds of the first (compiling) call, if compiled."""

    images_per_s: float
    compile_s: float | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(model: nn.Module, mode: str, batch: int, steps: int, warmup: int, repeats: int, device: torch.device,
               size: int, layout: bool = True) -> Timing:
    """Training images/s of ``model`` in ``mode`` (median of ``repeats`` timed loops); ``layout``: on CUDA,
    compiled as ``fit`` compiles there (inductor keeps channels-last, ``compile_for_training(channels_last=True)``);
    False: inductor's own layout rule, as before issue 13."""
    cuda = device.type == "cuda"
    model.to(device).train()
    if cuda:
        model.to(memory_format=torch.channels_last)
    torch._dynamo.reset()
    net = compile_for_training(model, channels_last=cuda and layout) if mode == "compiled" else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    if cuda:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    runs = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        runs.append(batch * steps / (time.perf_counter() - t0))
    model.to("cpu")
    return Timing(statistics.median(runs), first if mode == "compiled" else None)


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise argparse.ArgumentTypeError(f"--modes {text!r}: use a comma list of {', '.join(MODES)}")
    return modes


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda when present")
    ap.add_argument("--models", default="resnet50,vgg16,mobilenet_v2", help="torchvision architectures with a space")
    ap.add_argument("--wps", help="working points (ratios) to time, comma list (default: all of each model's space)")
    ap.add_argument("--multiples", default="1,8,32", help="rank multiples, comma list")
    ap.add_argument("--modes", type=_modes, default=list(MODES), help="eager, compiled or both")
    ap.add_argument("--compile-wps", help="working points timed compiled too (default: all); compiling costs minutes on a CPU")
    ap.add_argument("--compile-multiples", help="rank multiples timed compiled too (default: all of --multiples)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch threads on CPU (default: torch's)")
    ap.add_argument("--inductor-layout", action="store_true",
                    help="CUDA, compiled: leave the layout to inductor's own rule (off for most factorized models), "
                         "instead of keeping channels-last as fit does")
    ap.add_argument("--out", default=str(Path(__file__).with_name("LOG.md")))
    return ap


def _cell(t: Timing | None, ref: Timing | None) -> tuple[str, str]:
    if t is None:
        return "-", "-"
    return f"{t.images_per_s:.1f}", "-" if ref is None else f"{t.images_per_s / ref.images_per_s:.2f}"


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    multiples = [int(m) for m in args.multiples.split(",")]
    compile_multiples = set(multiples if args.compile_multiples is None else [int(m) for m in args.compile_multiples.split(",")])
    compile_wps = None if args.compile_wps is None else set(_floats(args.compile_wps))
    load_before, start = os.getloadavg(), time.perf_counter()
    rows = []
    for arch in args.models.split(","):
        torch.manual_seed(0)
        dense = getattr(torchvision.models, arch)(weights=None)
        wps = _floats(args.wps) if args.wps else list(load_space(arch).working_points)
        configs = {}
        for wp in wps:
            for k in multiples:
                try:
                    configs[wp, k] = solve(dense, wp, rank_multiple=k, cache_dir=cache_root() / "spectra")
                except ValueError as e:  # a coarse multiple may not reach a working point
                    print(f"{arch} at {wp:g}, rank multiple {k}: skipped ({e})", flush=True)
        layers = find_layers(dense).eligible
        top = {n: max(c.ranks.get(n, 1) for c in configs.values()) for n in layers}
        factors = layer_factors(layers, top)  # one SVD per layer for all the configs
        ref = {m: throughput(dense, m, args.batch, args.steps, args.warmup, args.repeats, device, args.size,
                            not args.inductor_layout) for m in args.modes}
        rows.append((arch, "dense", "-", count_params(dense), ref, ref))
        print(rows[-1], flush=True)
        for (wp, k), cfg in configs.items():
            small = factorize(dense, cfg.ranks, factors)
            modes = [m for m in args.modes if m == "eager" or (k in compile_multiples and (compile_wps is None or wp in compile_wps))]
            res = {m: throughput(small, m, args.batch, args.steps, args.warmup, args.repeats, device, args.size,
                            not args.inductor_layout) for m in modes}
            rows.append((arch, f"{wp:g}", str(k), cfg.compressed_params, res, ref))
            print(rows[-1], flush=True)
    load_after, wall = os.getloadavg(), time.perf_counter() - start
    _publish(args, device, rows, load_before[0], load_after[0], wall)


def _publish(args: argparse.Namespace, device: torch.device, rows: list, load_before: float, load_after: float, wall: float) -> None:
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name() if cuda else f"CPU {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    command = " ".join(["python benchmarks/gpu_retrain.py", *sys.argv[1:]])
    lines = [
        f"## Retrain throughput ({', '.join(args.models.split(','))}; {' and '.join(args.modes)}; {name}"
        f"{'; inductor layout rule' if cuda and args.inductor_layout else ''}): dense vs factorized, "
        f"eager vs compiled ({datetime.date.today()})",
        "",
        f"Command: `{command}`  ",
        f"torch {torch.__version__}, {'bf16 autocast, channels-last' if cuda else 'fp32, contiguous (as fit trains on a CPU)'}"
        f"{' (compiled: inductor layout rule)' if cuda and args.inductor_layout else ' (compiled: channels-last kept)' if cuda else ''}, "
        f"synthetic {args.size}x{args.size} inputs, batch {args.batch}, SGD; images/s are medians of {args.repeats} runs of "
        f"{args.steps} steps after {args.warmup} warm-up steps; compiled = `ranksearch.core.compile_for_training` "
        f"(torch.compile, inductor, dynamic=False), its first call timed apart (*compile s*). Ranks: CE1 seed rule at each "
        f"working point, rounded to the rank multiple *k*; random weights. Load average (1 min) before {load_before:.2f}, "
        f"after {load_after:.2f}; {wall:.0f} s in all.",
        "",
        "| model | WP | k | params | eager img/s | eager / dense | compiled img/s | compiled / dense | compiled / eager | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, wp, k, params, res, ref in rows:
        e, e_ratio = _cell(res.get("eager"), ref.get("eager") if wp != "dense" else None)
        c, c_ratio = _cell(res.get("compiled"), ref.get("compiled") if wp != "dense" else None)
        both = "eager" in res and "compiled" in res
        gain = f"{res['compiled'].images_per_s / res['eager'].images_per_s:.2f}" if both else "-"
        comp = f"{res['compiled'].compile_s:.0f}" if "compiled" in res else "-"
        lines.append(f"| {arch} | {wp} | {k} | {params:,} | {e} | {e_ratio} | {c} | {c_ratio} | {gain} | {comp} |")
    lines.append("")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
