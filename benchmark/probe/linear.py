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
the solver's iterations and whether it converged (``summary``).
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
from benchmark.probe.train import TrainedHead

#: Armijo's sufficient-decrease constant, L-BFGS memory and the most step halvings per iteration.
ARMIJO_C1, MEMORY, MAX_HALVINGS = 1e-4, 10, 40
#: Share of the training rows held out for selection when the data has no validation set.
HOLDOUT_FRACTION = 0.2
#: When validation picks the grid's lowest (highest) L2, this many more values past it, at most this
#: many times: the tiny CLIP's features want weaker regularisation than any fixed grid foresees.
EDGE_VALUES, EDGE_EXTENSIONS = 2, 2
#: The softmax curvature assumed by the preconditioner: the Hessian is about
#: ``c * Cov(x) (x) (diag p - p p^T) + l2``; 0.05 was fastest over 0.01 .. 1 on the quick suite's features.
PRECONDITION_CURVATURE = 0.05


class StandardizedLinear(nn.Module):
    """``logits = ((f - mean) / scale) @ weight + bias`` in float64; ``z`` is the input itself."""

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        for name, t in (("mean", mean), ("scale", scale), ("weight", weight), ("bias", bias)):
            self.register_buffer(name, t.detach().to(torch.float64).clone())

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ((f.to(torch.float64) - self.mean) / self.scale) @ self.weight + self.bias, f


@dataclass
class _Problem:
    """Centred, scaled training rows rotated to their principal axes, with a bias column (float64)."""

    xa: torch.Tensor  # n x (D + 1)
    y: torch.Tensor   # n
    num_classes: int
    mean: torch.Tensor
    scale: torch.Tensor
    rotation: torch.Tensor  # D x D, orthonormal columns (principal axes)
    spectrum: torch.Tensor  # D + 1: the rows' variance along each axis, and 1 for the bias

    @classmethod
    def build(cls, x: torch.Tensor, y: torch.Tensor, num_classes: int, per_dimension: bool) -> _Problem:
        x = x.to(torch.float64)
        mean = x.mean(0)
        std = x.std(0, unbiased=False)
        if per_dimension:
            scale = torch.where(std > 1e-12 * std.max().clamp_min(1e-300), std, torch.ones_like(std))
        else:
            rms = std.pow(2).mean().sqrt()
            scale = torch.full_like(std, float(rms) if float(rms) > 0 else 1.0)
        xs = (x - mean) / scale
        eig, rotation = torch.linalg.eigh(xs.T @ xs / xs.shape[0])
        spectrum = torch.cat([eig.clamp_min(0.0), torch.ones(1, dtype=eig.dtype, device=eig.device)])
        prob = cls(torch.empty(0), y, num_classes, mean, scale, rotation, spectrum)
        prob.xa = prob.augment(x)
        return prob

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Rows in the problem's coordinates: centred, scaled, rotated, with the bias column."""
        xs = ((x.to(torch.float64) - self.mean) / self.scale) @ self.rotation
        return torch.cat([xs, torch.ones(xs.shape[0], 1, dtype=xs.dtype, device=xs.device)], dim=1)

    def preconditioner(self, l2: torch.Tensor) -> torch.Tensor:
        """(G, p * K): the diagonal starting inverse Hessian of each member's L-BFGS."""
        h0 = 1.0 / (self.spectrum.unsqueeze(0) + l2.unsqueeze(1) / PRECONDITION_CURVATURE)
        return h0.unsqueeze(2).expand(-1, -1, self.num_classes).reshape(len(l2), -1)

    def to_features(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight D x K on the centred, scaled features, bias K) of a solution ``theta`` (p x K)."""
        return self.rotation @ theta[:-1], theta[-1]

    def from_features(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_features` (a warm start carried to another problem's axes)."""
        return torch.cat([self.rotation.T @ weight, bias.unsqueeze(0)], dim=0)

    @property
    def shape(self) -> tuple[int, int]:
        return self.xa.shape[1], self.num_classes

    def logits(self, xa: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """(n, G, K) logits of every member from one matrix product."""
        g, p, k = theta.shape
        return (xa @ theta.permute(1, 0, 2).reshape(p, g * k)).view(xa.shape[0], g, k)

    def value_and_grad(self, theta: torch.Tensor, l2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Objective (G,) and gradient (G, p, K) of every member at ``theta`` (G, p, K)."""
        n = self.xa.shape[0]
        g, p, k = theta.shape
        logits = self.logits(self.xa, theta)
        lse = torch.logsumexp(logits, dim=2)
        picked = logits.gather(2, self.y.view(n, 1, 1).expand(n, g, 1)).squeeze(2)
        w = theta[:, :-1, :]
        value = (lse - picked).mean(0) + 0.5 * l2 * w.pow(2).sum((1, 2))
        resid = torch.exp(logits - lse.unsqueeze(2))
        resid[torch.arange(n, device=resid.device), :, self.y] -= 1.0
        grad = (self.xa.T @ resid.reshape(n, g * k)).view(p, g, k).permute(1, 0, 2) / n
        grad[:, :-1, :] += l2.view(g, 1, 1) * w
        return value, grad

    def scores(self, xa: torch.Tensor, y: torch.Tensor, theta: torch.Tensor,
               subset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Accuracy and mean cross-entropy (G,) of every member on standardised rows ``xa``."""
        logits = self.logits(xa, theta)
        if subset is not None:
            pred = subset[logits[:, :, subset].argmax(2)]
        else:
            pred = logits.argmax(2)
        acc = (pred == y.view(-1, 1)).double().mean(0)
        ce = (torch.logsumexp(logits, 2) - logits.gather(2, y.view(-1, 1, 1).expand(-1, theta.shape[0], 1)).squeeze(2))
        return acc, ce.mean(0)


@dataclass
class LbfgsResult:
    theta: torch.Tensor          # (G, p, K)
    value: torch.Tensor          # (G,) objective at theta
    iterations: list[int]
    converged: list[bool]
    trace: list[list[float]] = field(default_factory=list)  # objective per iteration, per member


def lbfgs(problem: _Problem, l2: torch.Tensor, theta0: torch.Tensor, *, max_iter: int, tol: float,
          h0: torch.Tensor | None = None) -> LbfgsResult:
    """Minimise every member's objective at once: per-member L-BFGS memory, step and stop.

    ``h0`` (G x parameters): each member's diagonal starting inverse Hessian (None: identity),
    rescaled every step by ``s.y / y.H0.y``. Members that converge leave the batch (its state is compacted to the members still
    running), so a slow member costs only its own iterations.
    """
    g_count, shape = theta0.shape[0], theta0.shape
    theta = theta0.clone().reshape(g_count, -1)
    value, grad = problem.value_and_grad(theta.view(shape), l2)
    grad = grad.reshape(g_count, -1)
    final_theta, final_value, final_grad = theta.clone(), value.clone(), grad.clone()
    trace = [[float(v)] for v in value]
    iterations = [0] * g_count
    # State of the running members only; ``ids`` maps their rows to member numbers.
    ids = torch.nonzero(grad.abs().amax(1) > tol).squeeze(1)
    theta, value, grad, lam = theta[ids], value[ids], grad[ids], l2[ids]
    s_mem = torch.zeros(len(ids), MEMORY, theta.shape[1], dtype=theta.dtype, device=theta.device)
    y_mem = torch.zeros_like(s_mem)
    rho = torch.zeros(len(ids), MEMORY, dtype=theta.dtype, device=theta.device)
    gamma = torch.ones(len(ids), dtype=theta.dtype, device=theta.device)
    diag = torch.ones_like(theta) if h0 is None else h0.reshape(g_count, -1)[ids].to(theta.dtype)
    stored = 0
    for it in range(max_iter):
        if ids.numel() == 0:
            break
        # Two-loop recursion over the (synchronous, circular) memory, newest pair first.
        q = grad.clone()
        order = [(it - 1 - j) % MEMORY for j in range(stored)]
        alphas = []
        for j in order:
            a = rho[:, j] * (s_mem[:, j] * q).sum(1)
            q -= a.unsqueeze(1) * y_mem[:, j]
            alphas.append(a)
        if stored:
            r = gamma.unsqueeze(1) * diag * q
        else:  # first step: a gradient step of length at most 1 in the l1 sense (as torch's LBFGS)
            r = diag * q
            r = r * torch.clamp(1.0 / r.abs().sum(1), max=1.0).unsqueeze(1)
        for j, a in zip(reversed(order), reversed(alphas)):
            b = rho[:, j] * (y_mem[:, j] * r).sum(1)
            r += (a - b).unsqueeze(1) * s_mem[:, j]
        d = -r
        slope = (grad * d).sum(1)
        uphill = ~(slope < 0)
        if bool(uphill.any()):  # a stale memory: fall back to steepest descent for those members
            d[uphill] = -grad[uphill]
            slope[uphill] = -(grad[uphill] ** 2).sum(1)
        # Armijo backtracking, every member with its own step.
        step = torch.ones_like(value)
        new_th, new_f, new_g = theta.clone(), value.clone(), grad.clone()
        need = torch.ones_like(value, dtype=torch.bool)
        for _ in range(MAX_HALVINGS):
            w = torch.nonzero(need).squeeze(1)
            everyone = w.numel() == need.numel()
            trial = theta + step.unsqueeze(1) * d if everyone else theta[w] + step[w].unsqueeze(1) * d[w]
            f_t, g_t = problem.value_and_grad(trial.view(-1, *shape[1:]), lam if everyone else lam[w])
            ok = torch.isfinite(f_t) & (f_t <= (value[w] + ARMIJO_C1 * step[w] * slope[w]))
            acc = w[ok]
            new_th[acc], new_f[acc], new_g[acc] = trial[ok], f_t[ok], g_t.reshape(len(w), -1)[ok]
            need[acc] = False
            if not bool(need.any()):
                break
            step[need] *= 0.5
        stalled = need  # no decrease found within MAX_HALVINGS: at the optimum up to rounding
        s = new_th - theta
        yv = new_g - grad
        sy = (s * yv).sum(1)
        good = sy > 1e-10 * s.norm(dim=1) * yv.norm(dim=1)
        slot = it % MEMORY
        s_mem[:, slot] = torch.where(good.unsqueeze(1), s, torch.zeros_like(s))
        y_mem[:, slot] = torch.where(good.unsqueeze(1), yv, torch.zeros_like(yv))
        rho[:, slot] = torch.where(good, 1.0 / torch.where(good, sy, torch.ones_like(sy)), torch.zeros_like(sy))
        gamma = torch.where(good, sy / (yv * diag * yv).sum(1).clamp_min(1e-300), gamma)
        stored = min(stored + 1, MEMORY)
        theta, value, grad = new_th, new_f, new_g
        for pos, member in enumerate(ids.tolist()):
            iterations[member] += 1
            trace[member].append(float(new_f[pos]))
        done = ~((grad.abs().amax(1) > tol) & ~stalled)
        if bool(done.any()):  # write finished members out and drop them from the batch
            fin = ids[done]
            final_theta[fin], final_value[fin], final_grad[fin] = theta[done], value[done], grad[done]
            keep = ~done
            ids, theta, value, grad, lam = ids[keep], theta[keep], value[keep], grad[keep], lam[keep]
            s_mem, y_mem, rho, gamma, diag = s_mem[keep], y_mem[keep], rho[keep], gamma[keep], diag[keep]
    if ids.numel():  # members still running at max_iter
        final_theta[ids], final_value[ids], final_grad[ids] = theta, value, grad
    converged = (final_grad.abs().amax(1) <= tol).tolist()
    return LbfgsResult(final_theta.view(shape), final_value, iterations, [bool(c) for c in converged], trace)


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


def _search(problem: _Problem, val_xa: torch.Tensor, val_y: torch.Tensor, subset: torch.Tensor | None,
            hp: HParams, batch_grid: bool = True) -> _Search:
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
            res = lbfgs(problem, l2, theta0[members.start:members.stop], max_iter=int(hp.max_iter), tol=float(hp.tol),
                        h0=problem.preconditioner(l2))
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


def _solve_problem(data: PreparedData, x: torch.Tensor, y: torch.Tensor, hp: HParams,
                   batch_grid: bool = True) -> TrainedHead:
    """Select L2 on validation (or a holdout of the rows) and return the chosen probe."""
    k = data.num_classes
    if not bool(torch.isfinite(x).all()):
        raise TrainingDiverged(f"lp probe cannot be solved with hparams {hp.as_dict()}: train_x contains NaN or "
                               "inf: clean the features")
    selection = data.selection_set()
    refit = selection is None
    if refit:  # no validation set: hold out a stratified share of the training rows
        keep, hold = stratified_holdout(y.cpu().numpy(), HOLDOUT_FRACTION, 0)
        keep_t = torch.as_tensor(keep, device=x.device)
        hold_t = torch.as_tensor(hold, device=x.device)
        fit_x, fit_y, val_x, val_y = x[keep_t], y[keep_t], x[hold_t], y[hold_t]
        subset = None
    else:
        fit_x, fit_y = x, y
        val_x, val_y = selection
        subset = data.class_subsets.get(data.selection)
    problem = _Problem.build(fit_x, fit_y, k, bool(hp.standardize))
    search = _search(problem, problem.augment(val_x), val_y, subset, hp, batch_grid)
    best = search.best()
    theta, trace, iters, conv, objective = (search.theta[best], search.trace[best], search.iterations[best],
                                            search.converged[best], search.objective[best])
    if refit:  # the chosen value on every training row, warm-started from the holdout's solution
        start = problem.to_features(theta)
        problem = _Problem.build(x, y, k, bool(hp.standardize))
        l2 = torch.tensor([search.l2[best]], dtype=torch.float64, device=x.device)
        res = lbfgs(problem, l2, problem.from_features(*start).unsqueeze(0), max_iter=int(hp.max_iter),
                    tol=float(hp.tol), h0=problem.preconditioner(l2))
        theta, trace, iters, conv, objective = res.theta[0], res.trace[0], res.iterations[0], res.converged[0], float(res.value[0])
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
    summary = {"chosen_l2": chosen, "chosen_l2_at_edge": float(len(grid) > 1 and (chosen <= grid[0] or chosen >= grid[-1])),
               "lbfgs_iterations": float(iters), "converged": float(conv),
               "val_accuracy_selected": search.acc[best]}
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
