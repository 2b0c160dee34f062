"""Training throughput (images/s) of dense vs factorized ResNet50 and VGG16 at a Table 1 working point.

One training step loop per model on synthetic tensors (no data loading), with the retrain's settings on
CUDA: bf16 autocast, channels-last, SGD, no host synchronization inside the timed loop. The factorized
models (CE1 rule at the working point) have fewer FLOPs; the goal is that they train at least as fast.
Runs on CPU too (small batch, few steps) as a smoke test; the figures that matter come from a GPU.

    python benchmarks/gpu_retrain.py --models resnet50:0.25,vgg16:0.10 --batch 64 --steps 30
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from ranksearch.allocation import solve
from ranksearch.surgery import count_params

from _report import publish  # benchmarks/_report.py (scripts run from the repository root)


def throughput(model: torch.nn.Module, batch: int, steps: int, warmup: int, device: torch.device, size: int) -> float:
    cuda = device.type == "cuda"
    model.to(device).train()
    if cuda:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    if cuda:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="resnet50:0.25,vgg16:0.10", help="arch:ratio,...")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    for spec in args.models.split(","):
        arch, ratio = spec.split(":")
        torch.manual_seed(0)
        dense = getattr(torchvision.models, arch)(weights=None)
        cfg = solve(dense, float(ratio))
        from ranksearch.allocation import apply

        small = apply(dense, cfg)
        res = {}
        for label, m in (("dense", dense), ("factorized", small)):
            runs = [throughput(m, args.batch, args.steps, args.warmup, device, args.size) for _ in range(args.repeats)]
            res[label] = statistics.median(runs)
            m.to("cpu")
        rows.append((arch, ratio, count_params(dense), cfg.compressed_params, res["dense"], res["factorized"]))
        print(rows[-1], flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    lines = [
        f"## Retrain throughput, dense vs factorized ({datetime.date.today()}, {name})",
        "",
        f"Command: `python benchmarks/gpu_retrain.py --models {args.models} --batch {args.batch} --steps {args.steps} --repeats {args.repeats} --size {args.size}`  ",
        f"torch {torch.__version__}, {'bf16 autocast, channels-last' if device.type == 'cuda' else 'fp32'}, synthetic {args.size}x{args.size} inputs, median of {args.repeats} runs of {args.steps} steps.",
        "",
        "| model | ratio | params dense | params factorized | dense img/s | factorized img/s | factorized / dense |",
        "|---|---|---|---|---|---|---|",
        *[f"| {a} | {r} | {pd:,} | {pf:,} | {d:.1f} | {f:.1f} | {f / d:.2f} |" for a, r, pd, pf, d, f in rows],
        "",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
