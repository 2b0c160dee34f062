"""Inference latency in onnxruntime (CPU): dense vs factorized, at each working point of a space.

For each space the dense model and its factorized versions at the space's working points (ranks from
the CE1 seed rule, ``ranksearch.solve``: one MSE bound hitting the ratio; SVD factors, no retrain, which
does not change the cost) are written with ``ranksearch export --format onnx``'s writer (each pair two
nodes, dynamic batch, checked against PyTorch) and timed in onnxruntime's CPU provider with a fixed
number of intra-op threads. The runs are interleaved (one run of every model per round), so a change in
the machine's load hits all models alike; the figure is the median over the rounds, at batch 1 and at
``--batch``. Inputs: the space's real test inputs when its task can be built here, else random ones of
its input shape (ResNet50 without a local ImageNet folder; its weights are then the random init, which
only changes which ranks the rule picks, not what a rank costs). Writes its section to benchmarks/LOG.md.

    python benchmarks/inference.py --spaces mnist5k-cnn,resnet50 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _report import publish  # benchmarks/_report.py (scripts run from the repository root)

INPUT_SHAPES = {"resnet50": (3, 224, 224), "vgg16": (3, 224, 224), "mobilenet_v2": (3, 224, 224)}
"""Input shape (without the batch) of spaces whose data may be absent here."""


def _inputs(space: Any, batch: int) -> tuple[Any, torch.Tensor, str]:
    """The space's task (or None), an input batch of ``batch`` real test samples (or random ones), and which."""
    from ranksearch.errors import RankSearchError

    try:
        task = space.build_task()
    except RankSearchError:
        if space.name not in INPUT_SHAPES:
            raise
        g = torch.Generator().manual_seed(0)
        return None, torch.randn(batch, *INPUT_SHAPES[space.name], generator=g), "random"
    items = [task.test[i % len(task.test)][0] for i in range(batch)]
    return task, torch.stack(items), "test split"


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no spinning after a run: the sessions timed in turn would otherwise take each other's cores (MobileNetV2's
    # dense model: 11-15 ms with spinning beside two other sessions, 4.7 ms without; benchmarks/latency.py)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _time(sessions: dict[str, Any], x: torch.Tensor, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median ms per run of each session on ``x``, the runs interleaved round by round."""
    feed = x.numpy()
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, {s.get_inputs()[0].name: feed})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for k, s in sessions.items():
            name = s.get_inputs()[0].name
            t = time.perf_counter()
            s.run(None, {name: feed})
            times[k].append(1000 * (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in times.items()}


def _space_rows(name: str, args: argparse.Namespace, folder: Path) -> tuple[list[str], dict[str, Any]]:
    from ranksearch import apply, count_params, load_space, solve
    from ranksearch.results import LAYER_OPS, onnx_op_counts, write_model
    from ranksearch.spaces import cache_root

    space = load_space(name)
    task, x_big, source = _inputs(space, args.batch)
    dense = space.build_model(task) if task is not None else space.build_architecture().eval()
    weights = "trained here (cached)" if task is not None else "random init"
    models = {"dense": (dense, 1.0)}
    for wp in space.working_points:
        cfg = solve(dense, wp, exclude=space.exclude, rank_multiple=space.rank_multiple, min_rank=space.min_rank,
                    cache_dir=cache_root() / "spectra", model_name=space.name)
        models[f"{wp:g}"] = (apply(dense, cfg).eval(), cfg.achieved_ratio)
    files, export_s = {}, {}
    for key, (model, _) in models.items():
        t = time.perf_counter()
        files[key] = folder / f"{name}-{key}.onnx"
        write_model(model, files[key], "onnx", x_big[:2])
        export_s[key] = time.perf_counter() - t
        print(f"{name} {key}: exported in {export_s[key]:.1f} s", flush=True)
    sessions = {k: _session(p, args.threads) for k, p in files.items()}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    small = _time(sessions, x_big[:1], args.repeats)
    big = _time(sessions, x_big, args.repeats)
    load_after = os.getloadavg()[0]
    rows = []
    for key, (model, ratio) in models.items():
        counts = onnx_op_counts(files[key])
        nodes = sum(counts.get(op, 0) for op in LAYER_OPS)
        label = "dense" if key == "dense" else f"WP {key}"
        rows.append(f"| {name} | {label} | {ratio:.4f} | {count_params(model):,} | {nodes} | {files[key].stat().st_size / 1e6:.2f} | "
                    f"{small[key]:.3f} | {small[key] / small['dense']:.3f} | {big[key]:.2f} | {big[key] / big['dense']:.3f} |")
    meta = {"source": source, "weights": weights, "load": (load_before, load_after), "timing_s": time.perf_counter() - t0,
            "export_s": export_s}
    return rows, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", default="mnist5k-cnn,resnet50")
    ap.add_argument("--batch", type=int, default=16, help="the larger batch (the other is 1)")
    ap.add_argument("--repeats", type=int, default=30, help="timed rounds per batch size (median)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (and torch's)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("LOG.md")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    load_start, t_start = os.getloadavg()[0], time.time()
    rows, metas = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.spaces.split(","):
            r, metas[name] = _space_rows(name, args, Path(tmp))
            rows += r
    load_end = os.getloadavg()[0]
    cmd = f"python benchmarks/inference.py --spaces {args.spaces} --batch {args.batch} --repeats {args.repeats} --threads {args.threads}"
    lines = [
        f"## Inference ({', '.join(args.spaces.split(','))}): onnxruntime CPU latency, dense vs factorized ({datetime.date.today()})",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {platform.machine()} ({platform.processor() or 'cpu'}), {os.cpu_count()} CPU cores; onnxruntime "
        f"{onnxruntime.__version__} (CPUExecutionProvider, {args.threads} intra-op threads, 1 inter-op, sequential, all graph "
        f"optimizations), torch {torch.__version__}; load average (1 min) before {load_start:.2f}, after {load_end:.2f}; "
        f"{time.time() - t_start:.0f} s in all.  ",
        "Ranks: the CE1 seed rule (`ranksearch.solve`, one MSE bound) at each working point of the space; files written by "
        "`ranksearch export --format onnx`'s writer (each low-rank pair two nodes, dynamic batch, checked against PyTorch). "
        f"*ratio*: parameters kept; *layer nodes*: Conv/ConvTranspose/Gemm/MatMul nodes; *ms*: median over {args.repeats} "
        f"interleaved rounds (every model once per round) after 3 warm-up runs; *x dense*: factorized / dense at the same batch.  ",
        "; ".join(f"{n}: {m['source']} inputs, dense weights {m['weights']}, load {m['load'][0]:.2f} -> {m['load'][1]:.2f} "
                  f"while timed ({m['timing_s']:.0f} s)" for n, m in metas.items()),
        "",
        f"| space | model | ratio | params | layer nodes | MB | batch 1 ms | x dense | batch {args.batch} ms | x dense |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
