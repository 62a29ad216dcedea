"""Reading suite files: YAML, the schema, then names checked against the registries.

``load_suite`` is the one door: a YAML syntax error names the line and column, schema problems
come from ``benchmark.config.messages``, and data sets, OOD groups and backbone families are
looked up in their registries. Whether a known data set's files are present is a separate
question, answered by ``check_data_available`` just before running, so a suite stays valid on a
machine that lacks the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from benchmark.config.messages import describe, raise_problems
from benchmark.config.renames import apply_renames
from benchmark.config.schema import Suite
from benchmark.errors import ConfigError, DatasetUnavailable, UnknownNameError


def _check_names(suite: Suite) -> list[str]:
    """Registry lookups; imported here so this module loads before the registries exist."""
    from benchmark.backbones import list_backbones
    from benchmark.data import get_dataset, get_ood_group

    problems: list[str] = []

    def dataset(where: str, name: str) -> None:
        try:
            get_dataset(name, data_root=suite.data_root)
        except UnknownNameError as e:
            problems.append(f"{where} = {name!r}: {e}")
        except DatasetUnavailable:
            pass  # known but not installed: check_data_available reports it before running

    for i, b in enumerate(suite.pretrain):
        dataset(f"pretrain[{i}].corpus", b.corpus)
    for i, name in enumerate(suite.downstream.id):
        dataset(f"downstream.id[{i}]", name)
    for i, name in enumerate(suite.downstream.ood):
        try:
            get_ood_group(name)
        except UnknownNameError as e:
            problems.append(f"downstream.ood[{i}] = {name!r}: {e}")
    families = list_backbones()
    for i, frozen in enumerate(suite.backbones):
        if frozen.family not in families:
            problems.append(
                f"backbones[{i}].family = {frozen.family!r}: unknown backbone family "
                f"(known: {', '.join(sorted(families))}; plugins register under entry-point group "
                "'nmlbench.backbones')"
            )
    return problems


def validate_suite(data: Any, source: str | Path = "<suite>", *, check_names: bool = True) -> Suite:
    """Schema and name checks of a parsed suite; raise one ``ConfigError`` listing every problem.

    Keys renamed since older suite files were written are mapped first (``config.renames``).

    ``check_names=False`` skips the registry lookups (for tools that only need the structure).
    """
    source = str(source)
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise_problems(
            source,
            [
                f"<top level>: the file is {kind}; a suite is a mapping with keys "
                f"{', '.join(n for n, f in Suite.model_fields.items() if not f.exclude)}"
            ],
            "schema",
        )
    try:
        data = apply_renames(data, source)
    except ConfigError as e:
        raise_problems(source, [str(e)], "schema")
    try:
        suite = Suite.model_validate(dict(data))
    except ValidationError as e:
        raise_problems(source, [line for err in e.errors() for line in describe(err, Suite)], "schema")
    suite.source = source
    suite._raw = dict(data)
    if check_names:
        problems = _check_names(suite)
        if problems:
            raise_problems(source, problems, "unknown names")
    return suite


def load_suite(path: str | Path, *, check_names: bool = True) -> Suite:
    """Read and validate a suite file; YAML syntax errors name the line and column."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"suite file {p} does not exist (suites ship in the repository's suites/ folder)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"invalid suite file {p}: YAML syntax error at {where}: {problem}; nothing was run") from None
    return validate_suite(data, source=p, check_names=check_names)


def check_data_available(suite: Suite) -> None:
    """Raise ``DatasetUnavailable`` naming every data set the suite needs whose files are absent.

    Called by the CLI before running, so a long study does not fail an hour in. OOD groups count
    with their training set and all their test domains.
    """
    from benchmark.data import get_ood_group, list_datasets

    needed = suite.dataset_names()
    for name in suite.downstream.ood:
        g = get_ood_group(name)
        needed += [g.train, *g.tests]
    needed = list(dict.fromkeys(needed))
    status = {s.name: s for s in list_datasets(data_root=suite.data_root)}
    missing = [status[n] for n in needed if n in status and not status[n].available]
    if missing:
        root = suite.data_root or "(no data_root set in the suite)"
        lines = [f"  - {s.name}: {s.how_to_get}" for s in missing]
        raise DatasetUnavailable(
            f"suite {suite.name!r} needs {len(missing)} data set(s) whose files are absent under "
            f"data_root {root}:\n"
            + "\n".join(lines)
            + "\nInstall them there (or set data_root in the suite), then run again."
        )
