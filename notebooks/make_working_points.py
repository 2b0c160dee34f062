"""Writes working_points.ipynb from the cells below (run: python notebooks/make_working_points.py)."""

from pathlib import Path

import nbformat

CELLS = [
    ("md", """# The seed's working points (NNR CE1, Table 1)

Every working point of the five models of the CE1 contribution, solved with its rule (one MSE bound for
all layers, bisected to the target ratio of the whole model's parameters) and printed as its tables
are: layer, rank, parameters before and after. No training happens here: the three torchvision models
and the two small ones are their seeded random initializations (`Space.build_architecture()`), since
nothing is downloaded; give your local trained weights with `load_space(name).with_weights(path)` for
the ranks of a trained model. Last, for the two small models, the bytes of each working point as an NNR
bitstream (NNCodec) against the dense model's at the same quantization."""),
    ("code", """import ranksearch
from ranksearch.spaces import load_space

SEED_MODELS = ["vgg16", "resnet50", "mobilenet_v2", "dcase-audio", "image-compression"]
solved = {}
for name in SEED_MODELS:
    space = load_space(name)
    model = space.build_architecture().eval()  # seeded random init: pass weights for a trained model
    configs = [ranksearch.solve(model, wp, exclude=space.exclude, rank_multiple=space.rank_multiple,
                                min_rank=space.min_rank) for wp in space.working_points]
    solved[name] = (space, model, configs)
    print(f"{name}: {ranksearch.count_params(model):,} parameters; working points "
          + ", ".join(f"{c.target_ratio:g} -> {c.achieved_ratio:.4f}" for c in configs))"""),
    ("md", "## Per-layer tables: rank and parameters at each working point (`dense`: kept as it is)"),
    ("code", """def table(name):
    space, model, configs = solved[name]
    layers = list(ranksearch.spectra(model, exclude=space.exclude))
    head = f"{'layer':<28} {'params':>12} " + " ".join(f"{'WP ' + format(c.target_ratio, 'g'):>18}" for c in configs)
    print(f"== {name} ==")
    print(head)
    print(" " * 42 + " ".join(f"{'rank':>6} {'params':>11}" for _ in configs))
    for layer in layers:
        cells, before = [], None
        for c in configs:
            if layer in c.layers:
                entry = c.layers[layer]
                before = entry.params_before
                cells.append(f"{entry.rank:>6} {entry.params_after:>11,}")
            else:
                cells.append(f"{'dense':>6} {'':>11}")
        before = before if before is not None else sum(p.numel() for p in dict(model.named_modules())[layer].parameters())
        print(f"{layer:<28} {before:>12,} " + " ".join(cells))
    print(f"{'whole model':<28} {configs[0].original_params:>12,} "
          + " ".join(f"{'':>6} {c.compressed_params:>11,}" for c in configs))
    print()

for name in SEED_MODELS:
    table(name)"""),
    ("md", """## NNR bitstream sizes of the two small models

Each working point's factorized model (plain truncated SVD of the weights, no retrain) encoded by NNCodec
at qp -38, each pair as the standard's decomposed G/H tensors with the rank signalled, against the dense
model encoded at the same qp. Needs NNCodec: `pip install --no-deps 'nncodec==2.1.3'`."""),
    ("code", """from ranksearch.results import DEFAULT_QP, decode_nnr as decode, encode_nnr as encode

for name in ["dcase-audio", "image-compression"]:
    space, model, configs = solved[name]
    dense_bytes = len(encode(model, qp=DEFAULT_QP))
    print(f"{name}: dense {ranksearch.count_params(model):,} parameters, {dense_bytes:,} bytes at qp {DEFAULT_QP}")
    for c in configs:
        small = ranksearch.apply(model, c)
        data = encode(small, qp=DEFAULT_QP)
        assert set(decode(data)) == set(model.state_dict())  # decodes into the dense model's tensors
        print(f"  WP {c.target_ratio:<5g} ratio {c.achieved_ratio:.4f}: {len(data):>9,} bytes ({len(data) / dense_bytes:.3f}x the dense stream)")"""),
]

nb = nbformat.v4.new_notebook()
nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src) for kind, src in CELLS]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbformat.write(nb, Path(__file__).with_name("working_points.ipynb"))
