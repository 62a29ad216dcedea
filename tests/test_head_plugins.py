"""Heads as plugins: an outside head package found through ``nmlbench.heads``, the batched engine
training any head from its declarations, and no head name dispatched outside its own module.

``tests/plugins/nmlbench_extra_plugin`` is its own distribution; it is pip-installed (offline, no
build isolation) into a temporary directory put on ``sys.path`` for the tests of this module,
and the registry forgets it afterwards (``refresh_plugins``).
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from support import pip_install_plugin
from torch.nn import functional as F

from benchmark.errors import ConfigError, UnknownNameError
from benchmark.heads import (
    HeadSpec,
    HParam,
    get_head,
    head_names,
    hparam_label,
    plot_style,
    refresh_plugins,
    register_head,
    resolve_hparams,
    unregister_head,
)
from benchmark.heads.gradient import gradient_hparams
from benchmark.heads.mlp import RESIDUAL_MLP
from benchmark.probe import FitRequest, batch_groups, evaluate_head, fit_many, prepare_data, train_head

REPO = Path(__file__).resolve().parents[1]
PLUGIN_SRC = REPO / "tests" / "plugins" / "nmlbench_extra_plugin"
BUILTIN = ("lp", "lp_adamw", "mlp", "nmtune", "lgm", "finetune")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # fixes how reductions split: the plain-torch loop must match bit for bit
    yield
    torch.set_num_threads(old)


def _broken_distribution(site: Path) -> None:
    """A dist-info whose head entry points name a missing module and shadow the built-in ``lp``."""
    info = site / "broken_heads-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-heads\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[nmlbench.heads]\nbroken = nmlbench_module_that_does_not_exist:HEAD\n"
        "lp = nmlbench_extra_plugin.cosine:COSINE\n"
    )


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    site = pip_install_plugin(PLUGIN_SRC, tmp_path_factory.mktemp("head-plugin"))
    assert (site / "nmlbench_extra_plugin" / "cosine.py").is_file()
    _broken_distribution(site)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    refresh_plugins()
    yield site
    sys.path.remove(str(site))
    for name in [m for m in sys.modules if m.startswith("nmlbench_extra_plugin")]:
        del sys.modules[name]
    refresh_plugins()
    # The package also declares a noise kind and a metric; whatever loaded them while it was on
    # sys.path must not leave them registered for the tests after this module.
    from benchmark import metrics, noise

    noise.unregister_noise_kind("opposite") if "opposite" in noise.noise_kinds() else None
    metrics.unregister_metric("balanced_accuracy")
    noise.refresh_plugins()
    metrics.refresh_plugins()
    assert "cosine" not in head_names()
    assert "opposite" not in noise.noise_kinds() and "balanced_accuracy" not in metrics.METRICS


def blobs(n: int, k: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    centres = np.random.default_rng(0).standard_normal((k, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return torch.tensor(centres[y] + rng.standard_normal((n, d)), dtype=torch.float32), torch.tensor(y)


@pytest.fixture(scope="module")
def data():
    x, y = blobs(200, 4, 8, seed=1)
    vx, vy = blobs(120, 4, 8, seed=2)
    return prepare_data(x, y, {"val": vx[:60], "test": vx[60:]}, {"val": vy[:60], "test": vy[60:]}, device="cpu")


def test_installed_head_is_found_resolved_and_listed(plugin_site: Path) -> None:
    assert head_names()[: len(BUILTIN)] == BUILTIN and "cosine" in head_names()
    head = get_head("cosine")
    assert head.label == "Cosine" and head.sweepable("label_smoothing") and "lr" in head.per_member
    hp = resolve_hparams("cosine", label_smoothing=0.2, epochs=3)
    assert hp.as_dict() == {
        "epochs": 3,
        "batch_size": 64,
        "lr": 0.01,
        "weight_decay": 0.0,
        "epoch_selection": "best_val",
        "temperature": 10.0,
        "label_smoothing": 0.2,
    }
    assert hp.lam is None and hp.temperature == 10.0 and hp.arch() == {"temperature": 10.0}
    with pytest.raises(ConfigError, match="label_smoothing must be below 1"):
        resolve_hparams("cosine", label_smoothing=1.0)
    with pytest.raises(ConfigError, match="label_smoothing do not apply to method 'mlp'.*applies to cosine"):
        resolve_hparams("mlp", label_smoothing=0.1)
    assert hparam_label("cosine", hp.as_dict()) == "τ10 ls0.2" and plot_style("cosine") == ("tab:purple", "D")
    # an installed plugin never joins the heads a suite runs when it lists none
    from benchmark.heads import default_heads

    assert default_heads() == ("lp", "mlp", "nmtune")


def test_a_suite_names_the_plugin_head_and_sweeps_its_values(plugin_site: Path) -> None:
    from benchmark.config import validate_suite
    from benchmark.plan import head_grid

    suite = validate_suite(
        {
            "name": "t",
            "backbones": [{"family": "timm", "arch": "resnet18"}],
            "downstream": {
                "id": ["sklearn-digits"],
                "heads": ["lp", "cosine"],
                "grid": {"label_smoothing": [0.0, 0.1]},
                "hparams": {"epochs": 2},
            },
        },
        check_names=False,
    )
    grid = head_grid(suite)
    assert [(h.head, h.label_smoothing, h.epochs) for h in grid] == [
        ("lp", None, None),
        ("cosine", 0.0, 2),
        ("cosine", 0.1, 2),
    ]


def _plain_cosine_loop(data, hp, seed: int):
    """The cosine head's recipe written out in plain torch: seeded init and batch order, AdamW,
    cosine schedule per step, label-smoothed cross-entropy; validation accuracy per epoch."""
    from nmlbench_extra_plugin.cosine import CosineHead

    x, y = data.train_x, data.train_y
    n, dim = x.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = CosineHead(dim, data.num_classes, temperature=hp.temperature)
    bs = min(hp.batch_size, n)
    steps = n // bs + (1 if n % bs > 1 else 0)
    opt = torch.optim.AdamW(head.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp.epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    losses, accs = [], []
    vx, vy = data.eval_sets["val"]
    for _ in range(hp.epochs):
        perm = torch.randperm(n, generator=gen)
        total = torch.zeros((), dtype=torch.float64)
        for step in range(steps):
            idx = perm[step * bs : (step + 1) * bs]
            loss = F.cross_entropy(head(x[idx])[0], y[idx], label_smoothing=hp.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach()
        losses.append(float(total) / steps)
        with torch.no_grad():
            accs.append(float((head(vx)[0].argmax(1) == vy).double().mean()))
    return head.eval(), losses, accs


def test_plugin_head_fits_through_fit_many_like_a_plain_torch_loop(plugin_site: Path, data) -> None:
    hps = [
        resolve_hparams("cosine", epochs=4, batch_size=48, lr=0.1, epoch_selection="last", label_smoothing=ls)
        for ls in (0.0, 0.2)
    ]
    requests = [FitRequest(hp, seed=s) for hp, s in zip(hps, (3, 4), strict=True)]
    assert batch_groups(requests) == [[0, 1]]  # one batch key (label smoothing is per member) ...
    recs = fit_many(data, requests)  # ... that the stacked engine cannot stack: each fits on its own
    for req, rec in zip(requests, recs, strict=True):
        assert "error" not in rec, rec.get("traceback")
        head, losses, accs = _plain_cosine_loop(data, req.hparams, req.seed)
        assert rec["head"] == "cosine" and rec["hparams"] == req.hparams.as_dict()
        assert rec["curves"] == {"train_loss": losses, "val_accuracy": accs}  # bit for bit
        with torch.no_grad():
            tx, ty = data.eval_sets["test"]
            assert rec["eval"]["test"]["accuracy"] == float((head(tx)[0].argmax(1) == ty).double().mean())
        # four blobs, chance 0.25: measured 0.82 (the LP: 0.75); 0.6 leaves room for another CPU's round-off
        assert rec["eval"]["test"]["accuracy"] > 0.6
    assert recs[0]["curves"] != recs[1]["curves"]


def test_a_broken_or_shadowing_plugin_only_warns(plugin_site: Path) -> None:
    refresh_plugins()
    with pytest.warns(UserWarning) as caught:
        names = head_names()
    messages = [str(w.message) for w in caught]
    assert any("broken-heads" in m and "failed to load" in m for m in messages), messages
    assert any("shadow" in m and "'lp'" in m for m in messages), messages
    assert "broken" not in names and "cosine" in names and get_head("lp").label == "LP"


def test_unknown_head_lists_the_registered_ones_with_the_plugin(plugin_site: Path) -> None:
    with pytest.raises(
        UnknownNameError,
        match="unknown head method 'svm'; known head methods: cosine, finetune, lgm, lp, lp_adamw, mlp, nmtune",
    ):
        get_head("svm")


# -- the batched engine trains any head from its declarations -------------------------------------


class _Smoothed:
    """Per-member loss: label-smoothed cross-entropy (no ``lam``: the old engine's TypeError)."""

    def __init__(self, hp) -> None:
        self.eps = float(hp.label_smoothing)

    def __call__(self, logits, y, z, f):
        loss = F.cross_entropy(logits, y, label_smoothing=self.eps)
        return loss, {"ce": loss}


class _StackedSmoothed:
    """The same loss for G members at once (one smoothing per member)."""

    def __init__(self, hps, device) -> None:
        self.eps = torch.tensor([float(h.label_smoothing) for h in hps], device=device)

    def __call__(self, logits, y, z, f, ce):
        logp = F.log_softmax(logits, dim=2)
        nll = -logp.gather(2, y.unsqueeze(2)).squeeze(2)
        return ((1 - self.eps).unsqueeze(1) * nll + self.eps.unsqueeze(1) * -logp.mean(2)).mean(1)


SMOOTHING = HParam("label_smoothing", "float", 0.1, "", maximum=1.0, per_member=True)


@pytest.fixture(params=["per_member", "stacked"])
def smoothed_head(request) -> Iterator[str]:
    name = f"smooth_mlp_{request.param}"
    loss = {"loss": _Smoothed} if request.param == "per_member" else {"stacked_loss": _StackedSmoothed}
    register_head(
        HeadSpec(
            name,
            "Smoothed MLP",
            20,
            "residual MLP, label-smoothed cross-entropy",
            (*gradient_hparams(), *RESIDUAL_MLP, SMOOTHING),
            "benchmark.heads.modules:ResidualMLPHead",
            default=False,
            **loss,
        )
    )
    yield name
    unregister_head(name)


def test_batched_engine_trains_a_head_with_its_own_loss(smoothed_head: str, data) -> None:
    """A head that is not NMTune, batched with MLP and NMTune members of its architecture: every
    member equals its lone fit (the reference trainer), to float32 round-off of the batching."""
    common = {"epochs": 3, "batch_size": 48}
    requests = [
        FitRequest(resolve_hparams(smoothed_head, label_smoothing=0.2, **common), seed=1),
        FitRequest(resolve_hparams("mlp", **common), seed=2),
        FitRequest(resolve_hparams(smoothed_head, label_smoothing=0.0, lr=3e-3, **common), seed=3),
        FitRequest(resolve_hparams("nmtune", lam=0.1, **common), seed=4),
    ]
    assert batch_groups(requests) == [[0, 1, 2, 3]]
    recs = fit_many(data, requests)
    for req, rec in zip(requests, recs, strict=True):
        assert "error" not in rec, rec.get("traceback")
        assert rec["batch_members"] == 4
        alone = train_head(data, req.hparams, seed=req.seed)
        # float32: batching changes the products' shapes (measured ~1e-7 relative on the losses)
        np.testing.assert_allclose(rec["curves"]["train_loss"], alone.curves["train_loss"], rtol=1e-5)
        assert rec["curves"]["val_accuracy"] == alone.curves["val_accuracy"]
        assert rec["eval"]["test"]["accuracy"] == evaluate_head(alone, data)["test"]["accuracy"]
    # the smoothing is the loss: with it the first epoch's loss is higher than without
    assert recs[0]["curves"]["train_loss"][0] > recs[2]["curves"]["train_loss"][0]


def test_stacked_loss_alone_equals_its_plain_formula() -> None:
    """``_StackedSmoothed`` (what the stacked engine calls) is PyTorch's label smoothing, member by member."""
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(3, 16, 4, generator=g), torch.randint(0, 4, (3, 16), generator=g)
    stacked = _StackedSmoothed([type("H", (), {"label_smoothing": e})() for e in (0.0, 0.1, 0.5)], "cpu")
    got = stacked(logits, y, None, None, None)
    for i, e in enumerate((0.0, 0.1, 0.5)):
        torch.testing.assert_close(got[i], F.cross_entropy(logits[i], y[i], label_smoothing=e))


# -- no head name is dispatched outside its own module ----------------------------------------------


def _dispatched_names(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """String constants equal to a head name used as a comparison operand (``==``, ``in``, incl.
    inside a tuple / set compared), a dict key or a subscript index."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []  # (line, name)

    def strings(node: ast.AST) -> Iterator[ast.Constant]:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value in names:
                yield sub

    for node in ast.walk(tree):
        operands: list[ast.AST] = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Dict):
            operands = [k for k in node.keys if k is not None]
        elif isinstance(node, ast.Subscript):
            operands = [node.slice]
        elif isinstance(node, ast.match_case):
            operands = [node.pattern]
        for op in operands:
            found += [(c.lineno, c.value) for c in strings(op)]
    return sorted(set(found))  # a comparison inside a subscript is one dispatch


def test_the_scan_finds_dispatch(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text(
        'if m == "nmtune" or m in ("mlp", "lp"):\n    pass\nSTYLE = {"lp": 1}\nw[(a, "mlp")]\n'
        'f("nmtune")\nname = "lp"\n'
    )
    assert _dispatched_names(src, set(BUILTIN)) == [(1, "lp"), (1, "mlp"), (1, "nmtune"), (3, "lp"), (4, "mlp")]


def test_no_head_name_is_dispatched_outside_its_own_module() -> None:
    root = REPO / "benchmark"
    own = {name: root / "heads" / f"{name}.py" for name in BUILTIN}
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for line, name in _dispatched_names(path, set(BUILTIN)):
            if path != own[name]:
                offenders.append(f"{path.relative_to(REPO)}:{line}: {name!r}")
    assert not offenders, "head names dispatched outside their modules:\n" + "\n".join(offenders)
