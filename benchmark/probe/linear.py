"""The converged linear probe (``lp``): multinomial logistic regression solved to its optimum.

Why: a linear probe on frozen features is a convex problem, so its score should not depend on
how long an optimiser happened to run. The paper's LP (AdamW, lr 0.1, 30 epochs; kept as
``lp_adamw``) stops far short of the optimum on small L2-normalised features, which made "NMTune
beats LP" measure an under-trained probe. This module solves it instead, the way the strongest
harnesses do (CLIP_benchmark: a coarse-then-fine search of the regularisation on validation):

- **Scale.** Features are centred and divided by one global scale, the root mean square of the
  training rows' per-dimension standard deviations. L2-normalised features have per-entry
  scales of about ``1/sqrt(D)``; after this one L2 grid means the same thing on any backbone
  and at any feature scale, while the features keep their geometry (centring only moves the
  unpenalised bias, a global scale only rescales L2), so the probe solves exactly the problem
  a logistic regression on the features as given solves. ``standardize: true`` divides each
  dimension by its own standard deviation instead (a dimension with no spread is only centred).
- **Objective.** ``mean_i CE(W x_i + b, y_i) + l2/2 * ||W||^2``, the bias unpenalised: exactly
  scikit-learn's ``LogisticRegression`` on the features as given with ``C = 1 / (l2 * n * s^2)``
  (``s`` the global scale; with ``standardize`` on the standardised rows with ``C = 1 / (l2 n)``).
- **Solver.** L-BFGS in float64 with Armijo backtracking; converged when the largest gradient
  entry is at most ``tol``. Every member (an L2 value of a fit) keeps its own memory, step and
  stopping point, and all members' logits and gradients come from one matrix product per step:
  the whole regularisation grid of a pair is one batched computation. The features are rotated
  to their principal axes (a rotation leaves the objective, L2 term included, unchanged), where
  the Hessian's feature part is diagonal, and L-BFGS starts each step from the diagonal
  preconditioner ``1 / (eigenvalue + l2 / PRECONDITION_CURVATURE)``: anisotropic features (the
  tiny CLIP's, whose best L2 is small) then converge in hundreds of iterations, not thousands.
- **Selection on validation.** ``l2_steps`` values log-spaced over ``[l2_min, l2_max]``; the
  best validation accuracy wins (ties: the lower validation cross-entropy, then the larger L2);
  when that is the grid's lowest (highest) value, the grid is extended past it (``EDGE_VALUES``
  more values at the same spacing, at most ``EDGE_EXTENSIONS`` times); then ``l2_refine`` values
  log-spaced strictly between the winner's grid neighbours are solved, warm-started from the
  winner, and the best of all values is kept. ``chosen_l2_at_edge`` flags a winner still at an
  edge of the extended grid. Without a validation set
  (``fit_and_evaluate`` on bare tensors), selection uses a stratified 20 % holdout of the
  training rows and the chosen value is solved again on all of them.

Each fit reports its whole validation curve over the L2 values (``curves``) and the chosen L2,
the solver's iterations and whether it converged (``summary``). The solver itself (the problem in
principal axes, the batched L-BFGS) is ``probe.lbfgs``; this module decides what it solves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from benchmark.data.sampling import stratified_holdout
from benchmark.errors import TrainingDiverged
from benchmark.heads.registry import HParams
from benchmark.probe.data import PreparedData
from benchmark.probe.lbfgs import LbfgsResult, LogisticProblem, lbfgs
from benchmark.probe.train import TrainedHead

#: Share of the training rows held out for selection when the data has no validation set.
HOLDOUT_FRACTION = 0.2
#: When validation picks the grid's lowest (highest) L2, this many more values past it, at most this
#: many times: the tiny CLIP's features want weaker regularisation than any fixed grid foresees.
EDGE_VALUES, EDGE_EXTENSIONS = 2, 2


class StandardizedLinear(nn.Module):
    """``logits = ((f - mean) / scale) @ weight + bias`` in float64; ``z`` is the input itself."""

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        for name, t in (("mean", mean), ("scale", scale), ("weight", weight), ("bias", bias)):
            self.register_buffer(name, t.detach().to(torch.float64).clone())

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ((f.to(torch.float64) - self.mean) / self.scale) @ self.weight + self.bias, f


def l2_grid(hp: HParams) -> np.ndarray:
    """The coarse grid: ``l2_steps`` values log-spaced over ``[l2_min, l2_max]``."""
    return np.logspace(math.log10(hp.l2_min), math.log10(hp.l2_max), int(hp.l2_steps))


def refine_grid(coarse: np.ndarray, best: int, count: int) -> np.ndarray:
    """``count`` values log-spaced strictly between the coarse neighbours of ``coarse[best]``."""
    if count <= 0 or len(coarse) < 2:
        return np.array([])
    lo = coarse[max(best - 1, 0)]
    hi = coarse[min(best + 1, len(coarse) - 1)]
    inner = np.logspace(math.log10(lo), math.log10(hi), count + 2)[1:-1]
    return inner[~np.isclose(inner, coarse[best], rtol=1e-12)]


def _best(acc: np.ndarray, loss: np.ndarray, l2: np.ndarray) -> int:
    """Highest validation accuracy; ties to the lower validation loss, then to the larger L2."""
    return int(min(range(len(acc)), key=lambda i: (-acc[i], loss[i], -l2[i])))


@dataclass
class _Search:
    """Every L2 value solved for one problem, and the solutions."""

    l2: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    converged: list[bool] = field(default_factory=list)
    trace: list[list[float]] = field(default_factory=list)
    theta: list[torch.Tensor] = field(default_factory=list)
    lattice: list[float] = field(default_factory=list)  # the log-spaced values (grid and edge extensions)

    def add(self, l2: float, acc: float, loss: float, res: LbfgsResult, i: int) -> None:
        self.l2.append(float(l2))
        self.acc.append(float(acc))
        self.loss.append(float(loss))
        self.objective.append(float(res.value[i]))
        self.iterations.append(res.iterations[i])
        self.converged.append(res.converged[i])
        self.trace.append(res.trace[i])
        self.theta.append(res.theta[i])

    def best(self) -> int:
        return _best(np.array(self.acc), np.array(self.loss), np.array(self.l2))


def _search(
    problem: LogisticProblem,
    val_xa: torch.Tensor,
    val_y: torch.Tensor,
    subset: torch.Tensor | None,
    hp: HParams,
    batch_grid: bool = True,
) -> _Search:
    """The coarse grid; while validation picks its lowest or highest value, :data:`EDGE_VALUES`
    more values past that edge at the same spacing (at most :data:`EDGE_EXTENSIONS` times); then
    ``l2_refine`` values around the winner. Each stage is one batched solve (``batch_grid=False``:
    one solve per value, in order); later stages start from the winner so far."""
    p, k = problem.shape
    dtype, dev = torch.float64, problem.xa.device
    out = _Search()

    def solve(values: list[float], theta0: torch.Tensor) -> None:
        stages = [range(len(values))] if batch_grid else [range(i, i + 1) for i in range(len(values))]
        for members in stages:
            if not members:
                continue
            l2 = torch.as_tensor([values[i] for i in members], dtype=dtype, device=dev)
            res = lbfgs(
                problem,
                l2,
                theta0[members.start : members.stop],
                max_iter=int(hp.max_iter),
                tol=float(hp.tol),
                h0=problem.preconditioner(l2),
            )
            acc, loss = problem.scores(val_xa, val_y, res.theta, subset)
            for j, i in enumerate(members):
                out.add(values[i], float(acc[j]), float(loss[j]), res, j)

    def from_best(count: int) -> torch.Tensor:
        return out.theta[out.best()].expand(count, p, k).clone()

    coarse = [float(v) for v in l2_grid(hp)]
    solve(coarse, torch.zeros(len(coarse), p, k, dtype=dtype, device=dev))
    lattice = list(coarse)
    factor = coarse[1] / coarse[0] if len(coarse) > 1 else None
    for _ in range(EDGE_EXTENSIONS if factor else 0):
        assert factor is not None  # the loop runs only when factor is set
        chosen = out.l2[out.best()]
        if chosen == lattice[0]:
            new = [chosen / factor ** (i + 1) for i in range(EDGE_VALUES)]
        elif chosen == lattice[-1]:
            new = [chosen * factor ** (i + 1) for i in range(EDGE_VALUES)]
        else:
            break
        solve(new, from_best(len(new)))
        lattice = sorted(lattice + new)
    out.lattice = lattice
    fine = refine_grid(np.array(lattice), lattice.index(out.l2[out.best()]), int(hp.l2_refine or 0))
    solve([float(v) for v in fine], from_best(len(fine)))
    return out


def _solve_problem(
    data: PreparedData, x: torch.Tensor, y: torch.Tensor, hp: HParams, batch_grid: bool = True
) -> TrainedHead:
    """Select L2 on validation (or a holdout of the rows) and return the chosen probe."""
    k = data.num_classes
    if not bool(torch.isfinite(x).all()):
        raise TrainingDiverged(
            f"lp probe cannot be solved with hparams {hp.as_dict()}: train_x contains NaN or inf: clean the features"
        )
    selection = data.selection_set()
    refit = selection is None
    if refit:  # no validation set: hold out a stratified share of the training rows
        keep, hold = stratified_holdout(y.cpu().numpy(), HOLDOUT_FRACTION, 0)
        keep_t = torch.as_tensor(keep, device=x.device)
        hold_t = torch.as_tensor(hold, device=x.device)
        fit_x, fit_y, val_x, val_y = x[keep_t], y[keep_t], x[hold_t], y[hold_t]
        subset = None
    else:
        assert selection is not None and data.selection is not None  # refit is False
        fit_x, fit_y = x, y
        val_x, val_y = selection
        subset = data.class_subsets.get(data.selection)
    problem = LogisticProblem.build(fit_x, fit_y, k, bool(hp.standardize))
    search = _search(problem, problem.augment(val_x), val_y, subset, hp, batch_grid)
    best = search.best()
    theta, trace, iters, conv, objective = (
        search.theta[best],
        search.trace[best],
        search.iterations[best],
        search.converged[best],
        search.objective[best],
    )
    if refit:  # the chosen value on every training row, warm-started from the holdout's solution
        start = problem.to_features(theta)
        problem = LogisticProblem.build(x, y, k, bool(hp.standardize))
        l2 = torch.tensor([search.l2[best]], dtype=torch.float64, device=x.device)
        res = lbfgs(
            problem,
            l2,
            problem.from_features(*start).unsqueeze(0),
            max_iter=int(hp.max_iter),
            tol=float(hp.tol),
            h0=problem.preconditioner(l2),
        )
        theta, trace, iters, conv, objective = (
            res.theta[0],
            res.trace[0],
            res.iterations[0],
            res.converged[0],
            float(res.value[0]),
        )
    order = np.argsort(search.l2)
    chosen = search.l2[best]
    grid = search.lattice
    head = StandardizedLinear(problem.mean, problem.scale, *problem.to_features(theta))
    curves = {
        "l2": [search.l2[i] for i in order],
        "val_accuracy_by_l2": [search.acc[i] for i in order],
        "val_loss_by_l2": [search.loss[i] for i in order],
        "train_loss_by_l2": [search.objective[i] for i in order],
        "iterations_by_l2": [float(search.iterations[i]) for i in order],
        "converged_by_l2": [float(search.converged[i]) for i in order],
        "train_loss": trace,  # the chosen solve's objective per L-BFGS iteration
    }
    summary = {
        "chosen_l2": chosen,
        "chosen_l2_at_edge": float(len(grid) > 1 and (chosen <= grid[0] or chosen >= grid[-1])),
        "lbfgs_iterations": float(iters),
        "converged": float(conv),
        "val_accuracy_selected": search.acc[best],
    }
    return TrainedHead(head.eval(), hp, objective, iters, int(x.shape[0]), curves=curves, summary=summary)


def fit_linear_probes(data: PreparedData, requests: list, *, batch_grid: bool = True) -> list[TrainedHead | Exception]:
    """The registry's fitter for ``lp``: one probe per request, equal problems solved once.

    Requests with the same hyper-parameters and training rows are the same convex problem (the
    head seed plays no part), so they share one solve. A failing problem fails only its requests.
    ``batch_grid=False`` solves the L2 values one at a time instead of as one batch: the same
    solutions (each value keeps its own L-BFGS state either way), the baseline that the batching
    benchmark (``benchmarks/test_bench_head_batch.py``) times the batched grid against.
    """
    results: list[TrainedHead | Exception] = []
    solved: dict[tuple, TrainedHead | Exception] = {}
    for req in requests:
        rows = None if req.rows is None else np.asarray(req.rows, dtype=np.int64)
        key = (req.hparams, None if rows is None else rows.tobytes())
        if key not in solved:
            try:
                x, y = data.train_x, data.train_y
                if rows is not None:
                    r = torch.as_tensor(rows, device=data.device)
                    x, y = x[r], y[r]
                solved[key] = _solve_problem(data, x, y, req.hparams, batch_grid)
            except Exception as err:  # noqa: BLE001 - reported for this problem's requests only
                solved[key] = err
        results.append(solved[key])
    return results
