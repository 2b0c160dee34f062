"""Tests of ranksearch.core._spectra: singular values against numpy, and the on-disk cache."""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ranksearch.core._spectra import curve_of, spectra, weight_digest

# ``ranksearch.core._spectra`` the attribute is the function (re-exported by the package); take the module.
spectra_mod = sys.modules["ranksearch.core._spectra"]


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 8, 3),
        dw=nn.Conv2d(8, 8, 3, groups=8),  # not eligible
        up=nn.ConvTranspose2d(8, 4, (2, 3), stride=2),
        flat=nn.Flatten(),
        fc1=nn.Linear(40, 24),
        fc2=nn.Linear(24, 10, bias=False),
        tiny=nn.Linear(2, 2),  # not eligible
    ))


def _numpy_sv(module: nn.Module) -> np.ndarray:
    w = module.weight.detach().double().numpy()
    return np.linalg.svd(w.reshape(w.shape[0], -1), compute_uv=False)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def test_singular_values_match_numpy() -> None:
    model = _model()
    curves = spectra(model)
    assert list(curves) == ["conv", "up", "fc1", "fc2"]
    for name, curve in curves.items():
        module = model.get_submodule(name)
        w = module.weight
        assert curve.shape == (w.shape[0], w[0].numel())
        ref = _numpy_sv(module)
        np.testing.assert_allclose(curve.singular_values, ref, rtol=1e-6, atol=1e-9 * ref[0])
        # the curve's error at rank r is the tail energy per element
        m, n = curve.shape
        for r in range(len(ref) + 1):
            assert curve.mse[r] == pytest.approx(np.sum(ref[r:] ** 2) / (m * n), rel=1e-6, abs=1e-12)


def test_spectra_exclude() -> None:
    curves = spectra(_model(), exclude=["fc1", r"u."])
    assert list(curves) == ["conv", "fc2"]


def test_cache_serves_second_call_from_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    first = spectra(model, cache_dir=tmp_path)
    files = _files(tmp_path)
    assert len(files) == len(first) == 4
    assert {p.name for p in files} == {f"{weight_digest(model.get_submodule(n).weight)}.npz" for n in first}

    def boom(*args, **kwargs):
        raise AssertionError("singular values recomputed although cached")

    monkeypatch.setattr(spectra_mod, "singular_values", boom)
    second = spectra(model, cache_dir=tmp_path)
    assert list(second) == list(first)
    for name in first:
        np.testing.assert_array_equal(second[name].singular_values, first[name].singular_values)
        assert second[name].shape == first[name].shape
    # an equal copy of the model (same bytes) is served from the cache too
    spectra(_model(), cache_dir=tmp_path)
    assert _files(tmp_path) == files
    # and without a cache folder the computation does run
    with pytest.raises(AssertionError, match="recomputed"):
        spectra(model)


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    real = spectra_mod.singular_values

    def counted(matrix):
        calls.append(tuple(matrix.shape))
        return real(matrix)

    monkeypatch.setattr(spectra_mod, "singular_values", counted)
    return calls


def test_changed_weight_gets_new_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    spectra(model, cache_dir=tmp_path)
    old_files = set(_files(tmp_path))
    old_key = weight_digest(model.fc1.weight)
    calls = _counting(monkeypatch)
    with torch.no_grad():
        model.fc1.weight[3, 5] += 0.5
    curves = spectra(model, cache_dir=tmp_path)
    assert calls == [(24, 40)]  # only the changed layer is recomputed
    new_key = weight_digest(model.fc1.weight)
    assert new_key != old_key
    assert set(_files(tmp_path)) == old_files | {tmp_path / f"{new_key}.npz"}
    np.testing.assert_allclose(curves["fc1"].singular_values, _numpy_sv(model.fc1), rtol=1e-6)


@pytest.mark.parametrize(
    "a, b",
    [
        (torch.ones(4, 6), torch.ones(6, 4)),  # same bytes, other shape
        (torch.ones(4, 6), torch.ones(4, 6, dtype=torch.float64)),
        (torch.zeros(4, 6), torch.zeros(4, 6).index_fill(1, torch.tensor([5]), 1e-7)),
    ],
)
def test_weight_digest_distinguishes(a: torch.Tensor, b: torch.Tensor) -> None:
    assert weight_digest(a) != weight_digest(b)
    assert weight_digest(a) == weight_digest(a.clone())
    assert weight_digest(a.T.contiguous().T) == weight_digest(a)


@pytest.mark.parametrize("index", [0, 1_234_567, 4_000_000 - 1])
def test_single_element_change_in_large_tensor_changes_key(index: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(2000, 2000)  # 16 MB
    key = weight_digest(w)
    assert key == weight_digest(w.clone())
    changed = w.clone()
    changed.view(-1)[index] = torch.nextafter(changed.view(-1)[index], torch.tensor(float("inf")))  # one ulp
    assert weight_digest(changed) != key
    swapped = w.clone()  # same multiset of bytes, two elements exchanged
    swapped.view(-1)[[index, (index + 1) % w.numel()]] = w.view(-1)[[(index + 1) % w.numel(), index]]
    assert weight_digest(swapped) != key


def test_weight_digest_dtypes() -> None:
    w = torch.randn(5, 7)
    for t in (w, w.bfloat16(), w.half(), w.double(), w > 0, torch.tensor(1.5), torch.empty(0, 3)):
        assert weight_digest(t) == weight_digest(t.clone())
    keys = {weight_digest(t) for t in (w, w.bfloat16(), w.half(), w.double(), torch.empty(0, 3), torch.empty(3, 0))}
    assert len(keys) == 6
    fast = weight_digest(w)
    assert fast.startswith("x") and len(fast) == 33  # XXH3-128: xxhash is a core dependency
    assert weight_digest(w + 1) != fast


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),  # truncated
        lambda p: p.write_bytes(b"\x00garbage" * 50),
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(b"\x93NUMPY garbage"),
    ],
    ids=["truncated", "garbage", "empty", "fake_npy"],
)
def test_corrupt_cache_file_is_recomputed_and_rewritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage) -> None:
    model = _model()
    spectra(model, cache_dir=tmp_path)
    path = tmp_path / f"{weight_digest(model.fc1.weight)}.npz"
    good = path.read_bytes()
    damage(path)
    calls = _counting(monkeypatch)
    curves = spectra(model, cache_dir=tmp_path)
    assert calls == [(24, 40)]
    np.testing.assert_allclose(curves["fc1"].singular_values, _numpy_sv(model.fc1), rtol=1e-6)
    # rewritten: the next call is served from disk again
    assert path.stat().st_size > 0
    with np.load(path) as z:
        np.testing.assert_allclose(z["singular_values"], _numpy_sv(model.fc1), rtol=1e-6)
    assert len(path.read_bytes()) == len(good)
    spectra(model, cache_dir=tmp_path)
    assert calls == [(24, 40)]


def test_cache_file_of_another_key_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    a, b = nn.Linear(30, 20), nn.Linear(30, 20)
    curve_of(a, tmp_path)
    path_a = tmp_path / f"{weight_digest(a.weight)}.npz"
    path_b = tmp_path / f"{weight_digest(b.weight)}.npz"
    path_b.write_bytes(path_a.read_bytes())  # a valid file, but it belongs to a's weight
    calls = _counting(monkeypatch)
    curve = curve_of(b, tmp_path)
    assert calls == [(20, 30)]
    np.testing.assert_allclose(curve.singular_values, _numpy_sv(b), rtol=1e-6)
    assert not np.allclose(curve.singular_values, _numpy_sv(a), rtol=1e-3)
    curve_of(b, tmp_path)  # rewritten with b's own content
    assert calls == [(20, 30)]


@pytest.mark.parametrize("field", ["singular_values", "check", "wrong_length"])
def test_cache_file_with_tampered_content_is_not_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(30, 20)
    curve_of(layer, tmp_path)
    path = tmp_path / f"{weight_digest(layer.weight)}.npz"
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    if field == "singular_values":  # values changed but stored check left as is
        data["singular_values"] = data["singular_values"] * 2
    elif field == "check":
        data["check"] = np.array("0" * 32)
    else:
        s = data["singular_values"][:-1]
        data["singular_values"] = s
    with open(path, "wb") as f:
        np.savez(f, **data)
    calls = _counting(monkeypatch)
    curve = curve_of(layer, tmp_path)
    assert calls == [(20, 30)]
    np.testing.assert_allclose(curve.singular_values, _numpy_sv(layer), rtol=1e-6)
