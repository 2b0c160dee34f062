"""What torch.compile sees in dense and factorized models: graphs, graph breaks, and inductor's layout choice.

For each model (random weights; the factorized one at its space's first working point, CE1 seed rule):

* ``torch._dynamo.explain`` in training mode, contiguous and channels-last: graphs and graph breaks;
* the training forward graph as AOTAutograd hands it to inductor, and inductor's own decision for it
  (``GraphLowering.decide_layout_opt``) as it is taken for CUDA: whether inductor lays activations out
  channels-last. On a CPU with oneDNN inductor always does; the CUDA rule, read here with oneDNN turned
  off, refuses as soon as one convolution has ``out * 2 <= in`` and a kernel larger than 1x1 (the
  "in-out" convolutions), which is what the first layer ``h`` of a factorized k x k convolution is
  whenever its rank is at most half its input channels.

    python benchmarks/compile_check.py --models mnist5k-cnn,resnet50,mobilenet_v2,image-compression
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable

import torch
import torchvision
from _report import publish  # benchmarks/_report.py (scripts run from the repository root)
from torch import nn

from ranksearch.core import apply, solve
from ranksearch.spaces import cache_root, load_space
from ranksearch.spaces.zoo import codec, mnist_cnn

#: space name -> (dense model factory, input shape of one batch)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mnist5k-cnn": (mnist_cnn.build_model, (4, 1, 28, 28)),
    "resnet50": (lambda: torchvision.models.resnet50(weights=None), (2, 3, 64, 64)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(weights=None), (2, 3, 64, 64)),
    "image-compression": (codec.build_model, (2, 3, 32, 32)),
}


def graph_breaks(model: nn.Module, x: torch.Tensor) -> tuple[int, int, list[str]]:
    """(graphs, graph breaks, break reasons) of ``model(x)`` in training mode."""
    torch._dynamo.reset()
    report = torch._dynamo.explain(model.train())(x)
    return report.graph_count, report.graph_break_count, [str(r.reason) for r in report.break_reasons]


def _in_out(node: torch.fx.Node) -> bool:
    w = node.args[1].meta["val"]  # type: ignore[union-attr]
    return w.size(0) * 2 <= w.size(1) and w.size(2) > 1


def layout_decision(model: nn.Module, x: torch.Tensor) -> tuple[bool, int, int]:
    """(inductor's CUDA layout-optimization decision, convolutions, "in-out" convolutions) of the
    training forward graph of ``model(x)``."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.graph import GraphLowering

    seen: list[tuple[bool, int, int]] = []

    def forward(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> Callable[..., object]:
        convs = [n for n in gm.graph.nodes if n.target is torch.ops.aten.convolution.default]
        with torch.backends.mkldnn.flags(enabled=False):  # the rule inductor applies off oneDNN (CUDA)
            seen.append((GraphLowering.decide_layout_opt(gm, is_inference=False), len(convs), sum(map(_in_out, convs))))
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=forward, bw_compiler=lambda gm, _: make_boxed_func(gm.forward))
    torch.compile(model.train(), backend=backend, dynamic=False)(x).sum().backward()
    (decision, convs, in_out), = seen
    return decision, convs, in_out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=None, help="write the table to this log file (e.g. benchmarks/LOG.md), in place of the last run's (default: print only)")
    args = ap.parse_args(argv)
    lines = [
        "| model | variant | WP | graphs / breaks (contiguous) | graphs / breaks (channels-last) | convolutions | in-out | CUDA layout opt |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.models.split(","):
        factory, shape = MODELS[name]
        torch.manual_seed(0)
        dense = factory()
        wp = load_space(name).working_points[0]
        small = apply(dense, solve(dense, wp, cache_dir=cache_root() / "spectra"))
        for variant, model in (("dense", dense), ("factorized", small)):
            x = torch.randn(shape)
            flat = graph_breaks(model, x)
            last = graph_breaks(model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last))
            model.to(memory_format=torch.contiguous_format)
            decision, convs, in_out = layout_decision(model, x)
            lines.append(f"| {name} | {variant} | {wp:g} | {flat[0]} / {flat[1]} | {last[0]} / {last[1]} | {convs} | {in_out} | "
                         f"{'on' if decision else 'off'} |")
            for reason in flat[2] + last[2]:
                lines.append(f"|  | break: {reason} | | | | | | |")
            print(lines[-1], flush=True)
    if args.out:
        head = [f"## torch.compile of factorized models ({', '.join(args.models.split(','))}): graph breaks and inductor's "
                f"layout choice ({datetime.date.today()}, CPU)", "", f"Command: `python benchmarks/compile_check.py --models {args.models}`", ""]
        publish(head + lines, args.out)
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
