"""Singular value spectrum: exact against numpy, SVE/LSVR sanity values, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark import spectrum
from benchmark.errors import ConfigError
from benchmark.spectrum import lsvr, singular_values, spectrum_summary, sve


def _reference(x: np.ndarray, normalize: bool, center: str | None) -> np.ndarray:
    y = np.asarray(x, dtype=np.float64)
    if normalize:
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
    if center == "columns":
        y = y - y.mean(axis=0, keepdims=True)
    elif center == "rows":
        y = y - y.mean(axis=1, keepdims=True)
    return np.linalg.svd(y, compute_uv=False)


def _features(m: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Anisotropic, non-zero mean: centring and normalisation both matter.
    return (rng.standard_normal((m, d)) * np.linspace(3.0, 0.2, d) + 0.5).astype(np.float32)


def _assert_close(s: np.ndarray, ref: np.ndarray) -> None:
    assert s.dtype == np.float64 and s.shape == ref.shape
    assert np.all(np.diff(s) <= 0), "not descending"
    # float64 throughout. The Gram route squares the condition: an eigenvalue is off by up to
    # ~max(M, D) eps64 s1^2, so a value near the floor by sqrt(1200 eps64) s1 = 5e-7 s1; hence 1e-6
    # relative, and against the largest value for ones at the floor (measured: 1e-15 relative).
    np.testing.assert_allclose(s, ref, rtol=1e-6, atol=1e-6 * ref[0])


@pytest.mark.parametrize("center", ["columns", "rows", None])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(
    ("m", "d"),
    [
        (300, 20),  # direct SVD, M > D
        (20, 300),  # direct SVD, M < D
        (1200, 400),  # D x D Gram (M > D)
        (400, 1200),  # M x M Gram (M < D)
    ],
)
def test_exact_against_numpy_svd(m, d, center, normalize):
    x = _features(m, d, seed=m + d)
    _assert_close(singular_values(x, normalize=normalize, center=center), _reference(x, normalize, center))


def test_chunked_gram_matches_unchunked(monkeypatch):
    # Force many tiny chunks for both Gram orientations: accumulation must not change results.
    x = _features(700, 300, seed=1)
    xt = _features(300, 700, seed=2)
    a, at = singular_values(x), singular_values(xt)
    monkeypatch.setattr(spectrum, "_CHUNK_ELEMENTS", 3000)
    _assert_close(singular_values(x), a)
    _assert_close(singular_values(xt), at)
    _assert_close(singular_values(x), _reference(x, True, "columns"))


def test_torch_input_any_dtype_matches_numpy():
    x = _features(500, 300, seed=3)
    s_np = singular_values(x)
    s_t = singular_values(torch.from_numpy(x))
    s_t64 = singular_values(torch.from_numpy(x.astype(np.float64)).requires_grad_())
    # The same float64 operations on the same values (float32 -> float64 is exact): equal here; other
    # buffer alignments may let BLAS sum in another order, a few eps64 (1e-12 leaves 1e4 of them).
    np.testing.assert_allclose(s_t, s_np, rtol=1e-12, atol=1e-12 * s_np[0])
    np.testing.assert_allclose(s_t64, s_np, rtol=1e-12, atol=1e-12 * s_np[0])
    if torch.cuda.is_available():
        # float64 on the GPU: other reduction orders and eigensolver, still ~1e-15 relative; 1e-9 is generous.
        np.testing.assert_allclose(singular_values(torch.from_numpy(x).cuda()), s_np, rtol=1e-9, atol=1e-9 * s_np[0])


def test_read_only_numpy_input():
    x = _features(50, 10)
    x.setflags(write=False)
    _assert_close(singular_values(x), _reference(x, True, "columns"))


def test_rows_and_columns_centring_differ():
    x = _features(200, 30, seed=4)
    rows, cols = singular_values(x, center="rows"), singular_values(x, center="columns")
    assert not np.allclose(rows, cols, rtol=1e-3)  # a real difference, 1e12 x the float64 round-off
    assert sve(x, center="rows") != pytest.approx(sve(x, center="columns"), rel=1e-3)


def test_rank_one_gives_sve_zero_lsvr_one():
    rng = np.random.default_rng(0)
    x = np.outer(rng.standard_normal(100), rng.standard_normal(12))
    # Rank one in float64: values under the noise floor come back as 0 (singular_values), so SVE is
    # 0 and LSVR 1 up to a few eps64.
    assert sve(x, normalize=False, center=None) == pytest.approx(0.0, abs=1e-9)
    assert lsvr(x, normalize=False, center=None) == pytest.approx(1.0, abs=1e-9)
    # Same for a tall M < D case through the M x M Gram.
    y = np.outer(rng.standard_normal(300), rng.standard_normal(1000))
    assert spectrum_summary(y, normalize=False, center=None) == pytest.approx({"sve": 0.0, "lsvr": 1.0}, abs=1e-9)


@pytest.mark.parametrize(("m", "d", "r"), [(50, 8, 8), (40, 600, 40), (900, 300, 5)])
def test_equal_singular_values_give_log_rank(m, d, r):
    # Orthonormal columns scaled equally: r equal singular values, the rest exactly zero.
    rng = np.random.default_rng(r)
    q, _ = np.linalg.qr(rng.standard_normal((m, r)))
    basis, _ = np.linalg.qr(rng.standard_normal((d, r)))
    x = 3.0 * q @ basis.T
    out = spectrum_summary(x, normalize=False, center=None)
    # float64: the r values are equal to ~r eps64 (QR), the rest under the floor (returned as 0).
    assert out["sve"] == pytest.approx(math.log(r), abs=1e-9)
    assert out["lsvr"] == pytest.approx(1.0 / r, abs=1e-12)


def test_sve_lsvr_match_definition():
    x = _features(400, 50, seed=9)
    s = _reference(x, True, "columns")
    p = s / s.sum()
    # 400 x 50 takes the direct SVD (backward stable: every value within ~D eps64 s1 of numpy's, and
    # none near the floor), so the definitions agree to ~1e-14; 1e-9 leaves 1e5 of that.
    assert sve(x) == pytest.approx(-(p * np.log(p)).sum(), rel=1e-9)
    assert lsvr(x) == pytest.approx(p[0], rel=1e-9)
    assert spectrum_summary(x) == pytest.approx({"sve": sve(x), "lsvr": lsvr(x)}, rel=1e-12)  # same arithmetic


@pytest.mark.parametrize(
    "x",
    [
        np.zeros((20, 5)),
        np.ones((1, 7)),  # a single row is zero after column centring
        np.tile(np.arange(1.0, 9.0), (30, 1)),  # identical rows: rounding residue only
    ],
)
def test_degenerate_features_raise_not_nan(x):
    assert np.all(singular_values(x) == 0.0)
    for fn in (sve, lsvr, spectrum_summary):
        with pytest.raises(ValueError, match="no spread"):
            fn(x)


@pytest.mark.parametrize(
    ("x", "kwargs", "match"),
    [
        (np.ones((3, 3)), {"center": "mean"}, "center='mean' is not allowed"),
        (np.ones(5), {}, "2-D matrix"),
        (np.zeros((0, 4)), {}, "empty"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), {}, "NaN or inf"),
        (np.array([["a", "b"]]), {}, "numeric"),
    ],
)
def test_bad_inputs(x, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        singular_values(x, **kwargs)
