"""Singular value spectrum of frozen features: SVE and LSVR (Chen et al., ICLR 2024: singular value entropy
and largest singular value ratio).

With singular values ``s_1 >= ... >= s_r`` of the preprocessed feature matrix ``F`` (M samples x
D dims) and ``p_i = s_i / sum_j s_j``:

- SVE  = ``-sum_i p_i log p_i`` (natural log; zero singular values contribute 0);
- LSVR = ``s_1 / sum_j s_j`` on a *linear* scale; the paper's plots use ``log(LSVR)``.

Preprocessing: each row is L2-normalised (``normalize=True``), then centred. ``center="columns"``
(our default) subtracts the mean over samples, the usual PCA centring; ``center="rows"`` subtracts
each row's mean over features, which is what the public reference code did; ``None`` skips it.

Why the Gram route: features can be 50,000 x 2,048. The D x D (or M x M) Gram matrix is summed in
float64 over row (or column) chunks, so memory stays at one chunk plus the Gram, and its
eigenvalues give ``s = sqrt(eig)``. Small problems use an SVD directly. Work happens on the
input's device (a CUDA tensor stays on its GPU); numpy input runs on the CPU.

Why BLAS ``dsyrk`` on the CPU: the Gram product is nearly all the time (results/performance.md).
It is symmetric, so a rank-k update that fills one triangle does half the multiply-adds of a
general matrix product at the same float64 exactness; float32 would be faster again but loses
the 1e-6 relative accuracy of the small singular values. Finiteness is checked on the raw
block, and the column sums come from a matrix-vector product, so the float64 copy of each chunk
is made once per pass and never scaled in pass 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.linalg.blas import dsyrk

from benchmark.errors import ConfigError

CENTER_OPTIONS: tuple[str | None, ...] = ("columns", "rows", None)

#: Below this min(M, D) the SVD of the materialised matrix is cheap and exact.
_DIRECT_SVD_MAX_RANK = 256
#: Elements of float64 per chunk (32 MiB): bounds memory for big feature matrices.
_CHUNK_ELEMENTS = 1 << 22


class _Source:
    """Uniform float64 access to blocks of a numpy array or a torch tensor."""

    def __init__(self, features: Any) -> None:
        if isinstance(features, torch.Tensor):
            self.data: Any = features.detach()
            self.device = features.device
        else:
            arr = np.asarray(features)
            if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
                raise ConfigError(f"features must be a numeric array, got dtype {arr.dtype}")
            self.data = arr
            self.device = torch.device("cpu")
        if self.data.ndim != 2:
            raise ConfigError(f"features must be a 2-D matrix (samples x dims), got shape {tuple(self.data.shape)}")
        self.m, self.d = (int(x) for x in self.data.shape)
        if self.m == 0 or self.d == 0:
            raise ConfigError(f"features are empty (shape {self.m} x {self.d}); need samples and dims")

    def raw(self, rows: slice, cols: slice = slice(None)) -> Any:
        """The block in its own dtype and container (no copy where slicing allows)."""
        return self.data[rows, cols]

    def block(self, rows: slice, cols: slice = slice(None)) -> torch.Tensor:
        """A float64 copy of the block, safe to modify in place."""
        return self.as_float64(self.raw(rows, cols))

    @staticmethod
    def as_float64(b: Any) -> torch.Tensor:
        if isinstance(b, torch.Tensor):
            return b.to(dtype=torch.float64, copy=True)
        # torch.tensor copies, so read-only arrays (e.g. from the Ray object store) are fine.
        return torch.tensor(np.asarray(b), dtype=torch.float64)

    @staticmethod
    def all_finite(b: Any) -> bool:
        if isinstance(b, torch.Tensor):
            return bool(torch.isfinite(b).all())
        return bool(np.isfinite(b).all())


class _Gram:
    """A float64 Gram matrix summed over chunks: BLAS ``dsyrk`` (one triangle) on the CPU,
    a general matrix product elsewhere (a GPU has the flops to spare)."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.cpu = device.type == "cpu"
        if self.cpu:
            # Fortran order: dsyrk updates it in place (f2py makes no copy).
            self.c = np.zeros((n, n), dtype=np.float64, order="F")
        else:
            self.g = torch.zeros((n, n), dtype=torch.float64, device=device)

    def add_crossprod(self, b: torch.Tensor) -> None:
        """``G += b.T @ b`` for a row chunk ``b`` (rows x n)."""
        if self.cpu:
            # b is C-contiguous, so b.T is a Fortran-contiguous (n x rows) view: A @ A.T, no copy.
            a = b.contiguous().numpy().T
            self.c = dsyrk(1.0, a, beta=1.0, c=self.c, trans=0, lower=0, overwrite_c=1)
        else:
            self.g += b.T @ b

    def add_outerprod(self, b: torch.Tensor) -> None:
        """``G += b @ b.T`` for a column chunk ``b`` (n x cols)."""
        if self.cpu:
            a = b.contiguous().numpy().T  # (cols x n), Fortran-contiguous: A.T @ A
            self.c = dsyrk(1.0, a, beta=1.0, c=self.c, trans=1, lower=0, overwrite_c=1)
        else:
            self.g += b @ b.T

    def full(self) -> torch.Tensor:
        """The symmetric matrix (the CPU path filled only its upper triangle)."""
        if not self.cpu:
            return self.g
        upper = np.triu(self.c)
        return torch.from_numpy(upper + np.triu(upper, 1).T)


def _chunks(n: int, size: int) -> list[slice]:
    size = max(1, size)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def singular_values(features: Any, normalize: bool = True, center: str | None = "columns") -> np.ndarray:
    """Singular values (float64, descending, length ``min(M, D)``) of the preprocessed features.

    Values below the numerical noise floor (``max(M, D) * eps`` relative to the largest, on the
    eigenvalue scale for the Gram route) are returned as exactly 0, as ``numpy.linalg.matrix_rank``
    treats them; if centring leaves nothing but rounding residue (a single row, identical rows,
    an all-zero matrix) all values are 0. Rows of zeros stay zero under ``normalize``.
    """
    if center not in CENTER_OPTIONS:
        raise ConfigError(f"center={center!r} is not allowed; use 'columns', 'rows' or None")
    src = _Source(features)
    m, d = src.m, src.d
    dev = src.device
    row_chunks = _chunks(m, _CHUNK_ELEMENTS // d)

    # Pass 1: row scales, row means and column means of the normalised matrix, and its size.
    inv = torch.ones(m, dtype=torch.float64, device=dev)
    row_mean = torch.zeros(m, dtype=torch.float64, device=dev)
    col_sum = torch.zeros(d, dtype=torch.float64, device=dev)
    fro2 = torch.zeros((), dtype=torch.float64, device=dev)
    for rs in row_chunks:
        raw = src.raw(rs)
        if not src.all_finite(raw):
            raise ConfigError("features contain NaN or inf; the spectrum is undefined. Clean them first")
        b = src.as_float64(raw)
        norm = torch.linalg.vector_norm(b, dim=1)
        if normalize:
            inv[rs] = torch.where(norm > 0, 1.0 / norm, torch.ones_like(norm))
        scale = inv[rs]
        fro2 += ((norm * scale) ** 2).sum()
        row_mean[rs] = b.sum(1) * scale / d
        col_sum += scale @ b
    col_mean = col_sum / m

    def block(rs: slice, cs: slice = slice(None)) -> torch.Tensor:
        b = src.block(rs, cs).mul_(inv[rs, None])
        if center == "columns":
            b.sub_(col_mean[None, cs])
        elif center == "rows":
            b.sub_(row_mean[rs, None])
        return b

    eps = float(np.finfo(np.float64).eps)
    rank = min(m, d)
    if rank <= _DIRECT_SVD_MAX_RANK and m * d <= 4 * _CHUNK_ELEMENTS:
        s = torch.linalg.svdvals(block(slice(None)))
        s = torch.where(s > max(m, d) * eps * s[0], s, torch.zeros_like(s))
    else:
        if m > d:
            gram = _Gram(d, dev)
            for rs in row_chunks:
                gram.add_crossprod(block(rs))
        else:
            gram = _Gram(m, dev)
            for cs in _chunks(d, _CHUNK_ELEMENTS // m):
                gram.add_outerprod(block(slice(None), cs))
        eig = torch.linalg.eigvalsh(gram.full()).flip(0).clamp(min=0.0)
        eig = torch.where(eig > max(m, d) * eps * eig[0], eig, torch.zeros_like(eig))
        s = eig.sqrt()
    # Centring that removes everything leaves only rounding residue: call it zero.
    norm_total = math.sqrt(float(fro2))
    if norm_total == 0.0 or float(s[0]) <= 1e-10 * norm_total:
        s = torch.zeros_like(s)
    return s.cpu().numpy().astype(np.float64)


def _probabilities(s: np.ndarray) -> np.ndarray:
    total = float(np.sum(s))
    if not total > 0.0:
        raise ConfigError(
            "the features have no spread after preprocessing (all zero, a single row, or identical "
            "rows once centred), so SVE/LSVR are undefined; pass at least two distinct rows"
        )
    return np.asarray(s, dtype=np.float64) / total


def sve_from_singular_values(s: np.ndarray) -> float:
    """Singular value entropy ``-sum p log p`` (natural log); zero values contribute 0."""
    p = _probabilities(s)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def lsvr_from_singular_values(s: np.ndarray) -> float:
    """Largest singular value ratio ``s_1 / sum s`` on a linear scale (plots use its log)."""
    p = _probabilities(s)
    return float(p.max())


def sve(features: Any, normalize: bool = True, center: str | None = "columns") -> float:
    """Singular value entropy of the features (higher: they span more dimensions).

    ``-sum_i p_i log p_i`` with ``p_i = s_i / sum_j s_j``, natural log, in ``[0, log(rank)]``.
    Raises ``ConfigError`` (a ``ValueError``) when the preprocessed features are all zero.
    """
    return sve_from_singular_values(singular_values(features, normalize, center))


def lsvr(features: Any, normalize: bool = True, center: str | None = "columns") -> float:
    """Largest singular value ratio ``s_1 / sum_j s_j`` in ``(0, 1]``, on a linear scale.

    Higher means one dominant component. The paper plots it on a log scale: use
    ``math.log(lsvr(...))`` for that. Raises ``ConfigError`` when the features are all zero.
    """
    return lsvr_from_singular_values(singular_values(features, normalize, center))


def spectrum_summary(features: Any, normalize: bool = True, center: str | None = "columns") -> dict[str, float]:
    """``{"sve": ..., "lsvr": ...}`` from one decomposition (LSVR on a linear scale)."""
    s = singular_values(features, normalize, center)
    return {"sve": sve_from_singular_values(s), "lsvr": lsvr_from_singular_values(s)}
