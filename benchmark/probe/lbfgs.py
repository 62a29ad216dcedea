"""L-BFGS for multinomial logistic regression, every member of a regularisation grid at once.

Why a module of its own: the converged linear probe (``probe.linear``) decides *which* problems
to solve (the L2 grid, its refinement, the selection on validation); this module only solves
them. ``LogisticProblem`` holds the centred, scaled training rows rotated to their principal
axes (where the Hessian's feature part is diagonal) and gives every member's objective and
gradient from one matrix product; ``lbfgs`` minimises all members together, each with its own
memory, step and stopping point. Float64 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: Armijo's sufficient-decrease constant, L-BFGS memory and the most step halvings per iteration.
ARMIJO_C1, MEMORY, MAX_HALVINGS = 1e-4, 10, 40
#: The softmax curvature assumed by the preconditioner: the Hessian is about
#: ``c * Cov(x) (x) (diag p - p p^T) + l2``; 0.05 was fastest over 0.01 .. 1 on the quick suite's features.
PRECONDITION_CURVATURE = 0.05


@dataclass
class LogisticProblem:
    """Centred, scaled training rows rotated to their principal axes, with a bias column (float64)."""

    xa: torch.Tensor  # n x (D + 1)
    y: torch.Tensor  # n
    num_classes: int
    mean: torch.Tensor
    scale: torch.Tensor
    rotation: torch.Tensor  # D x D, orthonormal columns (principal axes)
    spectrum: torch.Tensor  # D + 1: the rows' variance along each axis, and 1 for the bias

    @classmethod
    def build(cls, x: torch.Tensor, y: torch.Tensor, num_classes: int, per_dimension: bool) -> LogisticProblem:
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

    def scores(
        self, xa: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, subset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Accuracy and mean cross-entropy (G,) of every member on standardised rows ``xa``."""
        logits = self.logits(xa, theta)
        if subset is not None:
            pred = subset[logits[:, :, subset].argmax(2)]
        else:
            pred = logits.argmax(2)
        acc = (pred == y.view(-1, 1)).double().mean(0)
        ce = torch.logsumexp(logits, 2) - logits.gather(2, y.view(-1, 1, 1).expand(-1, theta.shape[0], 1)).squeeze(2)
        return acc, ce.mean(0)


@dataclass
class LbfgsResult:
    theta: torch.Tensor  # (G, p, K)
    value: torch.Tensor  # (G,) objective at theta
    iterations: list[int]
    converged: list[bool]
    trace: list[list[float]] = field(default_factory=list)  # objective per iteration, per member


def lbfgs(
    problem: LogisticProblem,
    l2: torch.Tensor,
    theta0: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    h0: torch.Tensor | None = None,
) -> LbfgsResult:
    """Minimise every member's objective at once: per-member L-BFGS memory, step and stop.

    ``h0`` (G x parameters): each member's diagonal starting inverse Hessian (None: identity),
    rescaled every step by ``s.y / y.H0.y``. Members that converge leave the batch (its state is compacted to
    the members still
    running), so a slow member costs only its own iterations.
    """
    g_count, shape = theta0.shape[0], theta0.shape
    theta = theta0.clone().reshape(g_count, -1)
    value, grad = problem.value_and_grad(theta.view(shape), l2)
    grad = grad.reshape(g_count, -1)
    final_theta, final_value, final_grad = theta.clone(), value.clone(), grad.clone()
    trace = [[float(v)] for v in value]
    iterations = [0] * g_count
    # State of the running members only (``l2_run``: their L2 strengths); ``ids`` maps their rows to member numbers.
    ids = torch.nonzero(grad.abs().amax(1) > tol).squeeze(1)
    theta, value, grad, l2_run = theta[ids], value[ids], grad[ids], l2[ids]
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
            f_t, g_t = problem.value_and_grad(trial.view(-1, *shape[1:]), l2_run if everyone else l2_run[w])
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
            ids, theta, value, grad, l2_run = ids[keep], theta[keep], value[keep], grad[keep], l2_run[keep]
            s_mem, y_mem, rho, gamma, diag = s_mem[keep], y_mem[keep], rho[keep], gamma[keep], diag[keep]
    if ids.numel():  # members still running at max_iter
        final_theta[ids], final_value[ids], final_grad[ids] = theta, value, grad
    converged = (final_grad.abs().amax(1) <= tol).tolist()
    return LbfgsResult(final_theta.view(shape), final_value, iterations, [bool(c) for c in converged], trace)
