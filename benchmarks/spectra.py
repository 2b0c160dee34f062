"""Time singular values of every eligible layer: torch.linalg.svdvals vs ranksearch's Gram route.

For each random-initialised torchvision model (``weights=None``, ``torch.manual_seed(0)``) the
eligible weight matrices (``nn.Linear`` weights; ``nn.Conv2d`` with ``groups == 1`` reshaped to
``(out, in * kh * kw)``; grouped/depthwise convs skipped) are timed side by side:

(a) per-layer ``torch.linalg.svdvals`` on float32 (baseline),
(b) ``ranksearch.core.singular_values`` per layer,
(c) ``ranksearch.spectra(model, cache_dir=TMP)`` on an empty cache, and
(d) its second call on the filled cache (both only when ``ranksearch.spectra`` exists).

Totals are medians over repeats; the errors are ``max |s - s_ref| / s_max`` over all layers, against
the float32 baseline and (unless ``--no-f64-reference``) a float64 SVD. A markdown section with the
command, date and machine is printed and written to ``--out``, in place of the last run's for the
same models and device.

``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` here (set it in the environment to override): with the
default spinning policy, LAPACK calls such as ``eigvalsh`` or ``svdvals`` on a 512 x 512 problem took
5-10 s instead of 0.03 s whenever other processes were busy on the same cores.

Example:
    python benchmarks/spectra.py --models vgg16 --repeats 3
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/numpy start their thread pools

import argparse
import datetime as dt
import importlib
import platform
import shlex
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from _report import publish  # benchmarks/_report.py (scripts run from the repository root)
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BIG_LAYER = 50_000_000  # entries; a model with such a layer gets 1 baseline repeat by default


def load_singular_values() -> tuple[Callable[[torch.Tensor], Any], str]:
    """``ranksearch.core.singular_values`` of this checkout, and where it came from."""
    sys.path.insert(0, str(ROOT))
    from ranksearch.core import singular_values

    return singular_values, "ranksearch.core"


def load_spectra() -> tuple[Callable[..., Any] | None, str]:
    """``ranksearch.spectra`` as a callable, or None with the reason it is unavailable."""
    try:
        package = importlib.import_module("ranksearch")
    except Exception as e:
        return None, f"`import ranksearch` failed: {type(e).__name__}: {e}"
    if not hasattr(package, "spectra"):
        return None, "ranksearch has no `spectra` attribute"
    fn = package.spectra
    if isinstance(fn, types.ModuleType):  # the submodule rather than a re-exported function
        fn = getattr(fn, "spectra", None)
    if not callable(fn):
        return None, "ranksearch.spectra is not callable"
    return fn, "ranksearch.spectra"


def machine(device: torch.device) -> str:
    """One line naming the processor, cores, torch version and device."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        cpu = f"{cpu} ({names[0]})" if names else cpu
    except OSError:
        pass
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return (
        f"processor {cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}), "
        f"torchvision {torchvision.__version__}, device {dev}"
    )


def eligible_matrices(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> 2-D weight matrix of every Linear and non-grouped Conv2d layer."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) or (isinstance(mod, nn.Conv2d) and mod.groups == 1):
            out[name] = mod.weight.detach().reshape(mod.weight.shape[0], -1)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_layers(fn: Callable[[torch.Tensor], Any], mats: dict[str, torch.Tensor], device: torch.device,
                repeats: int) -> tuple[list[float], dict[str, float], dict[str, np.ndarray]]:
    """Per-repeat totals, per-layer median seconds and the last repeat's singular values."""
    totals, per_layer, values = [], {k: [] for k in mats}, {}
    for _ in range(repeats):
        total = 0.0
        for name, w in mats.items():
            sync(device)
            t0 = time.perf_counter()
            s = fn(w)
            s = s.cpu().double().numpy() if isinstance(s, torch.Tensor) else np.asarray(s)
            sync(device)
            dt_ = time.perf_counter() - t0
            total += dt_
            per_layer[name].append(dt_)
            values[name] = s
        totals.append(total)
    return totals, {k: statistics.median(v) for k, v in per_layer.items()}, values


def max_err(values: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(values[k] - ref[k])) / max(ref[k][0], 1e-300)) for k in ref)


def bench_model(name: str, args: argparse.Namespace, singular_values: Callable[[torch.Tensor], Any],
                spectra: Callable[..., Any] | None, device: torch.device) -> tuple[list[str], list[str]]:
    """Time one model; return its row of the summary table and its slowest-layer rows."""
    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval().to(device)
    mats = eligible_matrices(model)
    largest = max(mats.values(), key=lambda w: w.numel())
    base_rep = args.baseline_repeats or (1 if largest.numel() >= BIG_LAYER else args.repeats)
    print(f"[{name}] {len(mats)} layers, largest {tuple(largest.shape)}; baseline x{base_rep}", flush=True)
    a_tot, a_layer, a_vals = time_layers(torch.linalg.svdvals, mats, device, base_rep)
    print(f"[{name}] (a) svdvals median {statistics.median(a_tot):.2f} s", flush=True)
    b_tot, b_layer, b_vals = time_layers(singular_values, mats, device, args.repeats)
    print(f"[{name}] (b) singular_values median {statistics.median(b_tot):.2f} s", flush=True)
    a, b = statistics.median(a_tot), statistics.median(b_tot)
    err32 = max_err(b_vals, a_vals)
    err64 = "skipped"
    if not args.no_f64_reference:
        ref = {k: torch.linalg.svdvals(w.double()).cpu().numpy() for k, w in mats.items()}
        err64 = f"{max_err(b_vals, ref):.1e}"
    c = d = "n/a (no ranksearch.spectra)"
    if spectra is not None:
        first, second = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                for out in (first, second):
                    sync(device)
                    t0 = time.perf_counter()
                    curves = spectra(model, cache_dir=tmp)
                    sync(device)
                    out.append(time.perf_counter() - t0)
        same = all(np.allclose(getattr(cv, "singular_values", b_vals.get(k)), b_vals[k], rtol=0,
                               atol=1e-9 * b_vals[k][0]) for k, cv in curves.items() if k in b_vals)
        c = f"{statistics.median(first):.2f} s ({len(curves)} layers{'' if same else ', values differ from (b)!'})"
        d = f"{statistics.median(second):.3f} s"
    load = f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"
    row = (f"| {name} | {len(mats)} | {tuple(largest.shape)} | {a:.2f} s (x{base_rep}) | "
           f"{b:.2f} s (x{args.repeats}) | {b / a:.3f} | {err32:.1e} | {err64} | {c} | {d} | {load} |")
    slow = sorted(a_layer, key=a_layer.get, reverse=True)[:3]
    layers = [f"| {name} | {k} | {tuple(mats[k].shape)} | {a_layer[k]:.2f} s | {b_layer[k]:.2f} s | "
              f"{b_layer[k] / a_layer[k]:.3f} |" for k in slow]
    return [row], layers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="vgg16,resnet50,mobilenet_v2",
                        help="comma-separated torchvision model names")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of (b), (c), (d); medians reported")
    parser.add_argument("--baseline-repeats", type=int, default=None,
                        help=f"repeats of (a); default --repeats, or 1 for a model with a layer of "
                        f">= {BIG_LAYER:.0e} entries")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--no-f64-reference", action="store_true", help="skip the float64 SVD error check")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("LOG.md"),
                        help="markdown file the section is written to (replacing the last run's)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or (args.baseline_repeats is not None and args.baseline_repeats < 1):
        parser.error("--repeats and --baseline-repeats must be >= 1")
    device = torch.device(args.device)
    singular_values, dec_source = load_singular_values()
    spectra, spec_source = load_spectra()
    rows, layers = [], []
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in models:
        r, lay = bench_model(name, args, singular_values, spectra, device)
        rows += r
        layers += lay
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", os.path.relpath(__file__, ROOT), *(sys.argv[1:] if argv is None else argv)])
    publish([
        f"## Singular values ({', '.join(models)}; {device}): svdvals vs Gram route "
        f"({dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z})",
        "", f"Command: `{command}`", "", f"Machine: {machine(device)}", "",
        f"(a) per-layer `torch.linalg.svdvals` (float32); (b) `singular_values` from {dec_source}; "
        f"(c)/(d) {spec_source}: first call on an empty cache / second call on the filled cache. "
        "Times are medians of totals over the repeats shown as xN; errors are max over layers of "
        "max |s_(b) - s_ref| / s_max, with s_ref the float32 baseline or a float64 SVD. Load: 1-minute "
        "load average before / after the model; the run itself adds about its thread count, more means "
        "other processes shared the cores and distorted the times.", "",
        "| model | layers | largest | (a) svdvals | (b) singular_values | (b)/(a) | err vs (a) | err vs f64 SVD "
        "| (c) spectra first | (d) spectra cached | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
        "Slowest layers under (a) (median seconds):", "",
        "| model | layer | shape | (a) | (b) | (b)/(a) |", "|---|---|---|---|---|---|", *layers, "",
    ], args.out)


if __name__ == "__main__":
    main()
