"""A suite's report as ONE self-contained HTML file a person can open anywhere, offline.

Figures are inlined as base64 PNG, the style and the few lines of script (click a column header
to sort the leaderboard) are inline, and nothing is fetched from the network. Sections: the
leaderboard with intervals and what validation chose, the figures, the claims with intervals
(``claims.md``), which head wins where (``comparisons.md``, suites of 3 or more heads), every
pre-training's noise record and per-epoch curves, and how the numbers were chosen.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from benchmark.atomic import atomic_write
from benchmark.claims import claims_markdown
from benchmark.comparisons import MIN_HEADS, comparisons_markdown, distinct_heads
from benchmark.heads import head_label
from benchmark.leaderboard import leaderboard_rows
from benchmark.leaderboard_text import FLAG, metric_cells, metric_headers, rank_rows, render_notes
from benchmark.report import CURVE_LABELS, curve_metrics, make_report, plot_pretrain_curves, spectra_for

FIGURE_CAPTIONS = {
    "id_ood_vs_noise.png": "ID and OOD accuracy against the pre-training noise ratio, one line per head, "
    "95 % intervals over seeds.",
    "sve_vs_id.png": "Singular value entropy of the frozen features against ID accuracy (points labelled by noise ratio).",  # noqa: E501
    "lsvr_vs_ood.png": "Largest singular value ratio of the frozen features against OOD accuracy.",
    "spectra.png": "Normalised singular value spectra of the frozen features.",
    "pretrain_curves.png": "Per-epoch pre-training metrics, one line per pre-training job.",
}

HOW_CHOSEN = [
    "<b>Selection on validation.</b> For every backbone, noise ratio, head, task and seed, the head's "
    "hyper-parameters (NMTune's λ, the MLP / NMTune depth) are chosen by the best accuracy on a validation "
    "split carved (stratified, fixed seed) from the downstream training data; ties go to the smaller λ, then "
    "the smaller depth. The test sets never take part in the choice. The <i>selected</i> column lists the "
    "winners and how often each won; <i>fits</i> counts the candidate fits considered.",
    "<b>Averaging.</b> Test accuracy and macro-F1 are averaged over ID tasks (and OOD accuracy over the OOD "
    "groups' test domains), then over units of replication: the pre-training seed, with the head seeds of one "
    "pre-training averaged inside it (they share its backbone; a deterministic head such as the LP counts "
    "once); for a frozen backbone (no pre-training seeds) the head seed. <i>n</i> is the number of units.",
    "<b>Intervals.</b> ± is the half-width of a two-sided 95 % Student-t interval over the units "
    "(t<sub>0.975, n-1</sub> · sd / √n); none when n = 1 (a deterministic head on a frozen backbone has one "
    "value; a bootstrap over test rows would need per-row predictions, which the fit records do not hold). "
    "Rows whose intervals overlap are not separated by this study.",
    "<b>Ranks.</b> Within each (backbone, noise ratio) cell the heads are ranked by their mean (1 = best), and "
    "each head's ranks are averaged over the cells; the interval is a 95 % percentile bootstrap that resamples "
    "each cell's units (paired across heads).",
    f"<b>Flags.</b> {FLAG}k after a head's name: k of the row's selected fits stayed near chance on validation "
    "while fitting their training data; such a row is not a result.",
    "<b>Spectra.</b> SVE (singular value entropy) is of the head's features on ID tasks, LSVR (largest "
    "singular value ratio) of the head's features on OOD tasks; the <i>raw</i> columns are of the frozen "
    "backbone features.",
    "<b>Claims.</b> Each claim is tested with paired differences over pre-training seeds (head seeds averaged "
    "first) or least-squares slopes over the noise ratio, with 95 % t-intervals; a finding holds only if its "
    "interval excludes 0 in the claimed direction.",
]

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;
margin:0 auto;max-width:1400px;padding:1.5em;color:#1d2330}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #d8dde6;padding-bottom:.2em}
.meta{color:#5b6475;font-size:.9em}table{border-collapse:collapse;margin:.6em 0;font-size:.86em}
th,td{border:1px solid #d8dde6;padding:.3em .55em;text-align:right;white-space:nowrap}
th{background:#eef1f6;position:sticky;top:0}td.t,th.t{text-align:left}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:hover{background:#dfe5ef}
th[data-dir=asc]::after{content:" ▲"}th[data-dir=desc]::after{content:" ▼"}
tr:nth-child(even) td{background:#f8f9fb}figure{margin:1em 0}figure img{max-width:100%;border:1px solid #e4e7ee}
figcaption{color:#5b6475;font-size:.88em}.claims td,.claims th{white-space:normal;text-align:left}
.wrap{overflow-x:auto}
"""

# Click a header: sort rows by that column (numbers by value, text alphabetically); missing
# values ("–") stay at the bottom in both directions.
_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = th.dataset.dir !== "asc";
      table.querySelectorAll("th").forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = asc ? "asc" : "desc";
      var body = table.tBodies[0];
      var value = function (tr) { var v = tr.children[col].dataset.v; var n = parseFloat(v);
        return v === "" ? null : (isNaN(n) ? v : n); };
      Array.from(body.rows).sort(function (a, b) {
        var x = value(a), y = value(b);
        if (x === null || y === null) { return (x === null) - (y === null); }
        var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
        return asc ? c : -c;
      }).forEach(function (tr) { body.appendChild(tr); });
    });
  });
});
"""


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (not isinstance(v, str) and pd.isna(v))


def _cell(display: str, sort_value: Any = None, text: bool = False) -> str:
    v = "" if _missing(sort_value) else str(sort_value)
    cls = ' class="t"' if text else ""
    return f'<td{cls} data-v="{html.escape(v)}">{html.escape(display)}</td>'


def _num_cell(v: Any, ci: Any = None, scale: float = 1.0, digits: int = 3) -> str:
    if _missing(v):
        return _cell("–")
    text = f"{float(v) * scale:.{digits}f}"
    if ci is not None and not _missing(ci):
        text += f" ± {float(ci) * scale:.{digits}f}"
    return _cell(text, float(v))


def leaderboard_table(rows: pd.DataFrame) -> str:
    """The leaderboard as a sortable HTML table (accuracies in %, ± the 95 % half-width)."""
    several = "fraction" in rows.columns
    label_noise = "label_noise_ratio" in rows.columns  # only when some row has noisy downstream labels
    heads = (
        ["Backbone", "Noise"]
        + (["Label noise"] if label_noise else [])
        + ["Method"]
        + (["Fraction"] if several else [])
        + [*metric_headers(rows), "n", "selected", "fits"]
    )
    text_cols = {"Backbone", "Method", "selected"}
    out = ['<div class="wrap"><table class="sortable" id="leaderboard"><thead><tr>']
    out += [f'<th class="{"t" if h in text_cols else ""}">{html.escape(h)}</th>' for h in heads]
    out.append("</tr></thead><tbody>")
    for r in rows.to_dict("records"):
        noise = r.get("noise_ratio")
        cells = [
            _cell(str(r.get("backbone")), r.get("backbone"), text=True),
            _cell("unknown" if _missing(noise) else f"{float(noise) * 100:g}%", noise),
            *([_cell(f"{float(r['label_noise_ratio']) * 100:g}%", r["label_noise_ratio"])] if label_noise else []),
            _cell(
                head_label(r.get("head"))
                + (f" {FLAG}{int(r['flagged'])}" if not _missing(r.get("flagged")) and r["flagged"] > 0 else ""),
                r.get("head"),
                text=True,
            ),
        ]
        if several:
            cells.append(_cell(f"{float(r['fraction']):g}", r["fraction"]))
        cells += [
            *metric_cells(r, _num_cell),
            _cell(str(r.get("n", "")), r.get("n")),
            _cell(str(r.get("selected") or ""), r.get("selected"), text=True),
            _cell("" if _missing(r.get("fits")) else str(int(r["fits"])), r.get("fits")),
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    out += [f'<p class="meta">{html.escape(n)}</p>' for n in render_notes(rows)] if len(rows) else []
    return "\n".join(out)


def rank_table(rows: pd.DataFrame) -> str:
    """Each head's mean rank over the (backbone, noise ratio) cells with its 95 % bootstrap interval."""
    heads, body = rank_rows(rows)
    if not body:
        return ""
    out = [
        "<p>Mean rank of each head over the (backbone, noise ratio) cells (1 = best), with a 95 % bootstrap "
        'interval over units of replication:</p><div class="wrap"><table id="ranks"><thead><tr>'
    ]
    out += [f'<th class="{"t" if i == 0 else ""}">{html.escape(h)}</th>' for i, h in enumerate(heads)]
    out.append("</tr></thead><tbody>")
    for r in body:
        out.append("<tr>" + "".join(_cell(v, v, text=(i == 0)) for i, v in enumerate(r)) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def noise_table(records: Sequence[Any]) -> str:
    """One row per pre-training: its noise record (requested / realised ratio, kind, seed, counts)."""
    if not records:
        return "<p>No pre-training in this suite (frozen backbones only).</p>"
    heads = [
        "pre-training",
        "group",
        "objective",
        "corpus",
        "noise kind",
        "requested",
        "realised",
        "seed",
        "samples",
        "labels changed",
        "epochs",
        "final loss",
    ]
    out = ['<div class="wrap"><table class="sortable" id="noise"><thead><tr>']
    out += [f'<th class="t">{h}</th>' if i < 5 else f"<th>{h}</th>" for i, h in enumerate(heads)]
    out.append("</tr></thead><tbody>")
    for r in records:
        p, m = r.params, r.metrics
        loss = (r.curves.get("loss") or [(None, m.get("loss"))])[-1][1]
        cells = [
            _cell(r.name, r.name, True),
            _cell(r.group, r.group, True),
            _cell(str(p.get("objective", "")), p.get("objective"), True),
            _cell(str(p.get("corpus", "")), p.get("corpus"), True),
            _cell(str(p.get("noise_kind", "")), p.get("noise_kind"), True),
            _num_cell(p.get("noise_ratio"), None, 100, 1),
            _num_cell(m.get("realised_ratio"), None, 100, 2),
            _cell(str(p.get("seed", "")), p.get("seed")),
            _cell("–" if _missing(m.get("noise_n")) else str(int(m["noise_n"])), m.get("noise_n")),
            _cell("–" if _missing(m.get("noise_changed")) else str(int(m["noise_changed"])), m.get("noise_changed")),
            _cell(str(p.get("epochs", "")), p.get("epochs")),
            _num_cell(loss, None, 1, 3),
        ]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append(
        '</tbody></table></div><p class="meta">requested / realised: noise ratio in %; '
        "labels changed: samples whose label (or caption) the noise changed.</p>"
    )
    return "\n".join(out)


def _figure_html(name: str, png: bytes, caption: str | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    caption = html.escape(caption or FIGURE_CAPTIONS.get(name, name))
    return (
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _nested_markdown(text: str) -> str:
    """A report markdown file (# title, ## sections) as HTML nested under this page's h2."""
    from markdown_it import MarkdownIt

    lines = [("#" + ln) if ln.startswith("## ") else ln for ln in text.splitlines() if not ln.startswith("# ")]
    return MarkdownIt("commonmark", {"html": False}).enable("table").render("\n".join(lines))


def render_html(
    suite: str,
    rows: pd.DataFrame,
    figures: Mapping[str, bytes],
    claims_md: str,
    pretrains: Sequence[Any],
    *,
    source: str = "",
    note: str = "",
    captions: Mapping[str, str] | None = None,
    comparisons_md: str = "",
) -> str:
    """The report page (a string); ``figures`` maps file names to PNG bytes (``captions`` overrides
    ``FIGURE_CAPTIONS`` per name); ``comparisons_md`` (``comparisons.md``) adds the section "Which
    head wins where" when not empty."""
    captions = captions or {}
    # claims.md is a document of its own (# title, ## per claim): nest it under this page's heading.
    claims = _nested_markdown(claims_md)
    comparisons = _nested_markdown(comparisons_md) if comparisons_md else ""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    curves = {k: v for k, v in figures.items() if k == "pretrain_curves.png"}
    main = {k: v for k, v in figures.items() if k not in curves}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>nml-bench report: {html.escape(suite)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>nml-bench report: {html.escape(suite)}</h1>",
        f'<p class="meta">Generated {stamp} from {html.escape(source)}. {html.escape(note)}</p>',
        '<h2 id="leaderboard-h">Leaderboard</h2>',
        "<p>One row per backbone x pre-training noise ratio x head; click a column header to sort. "
        "Accuracies in %, ± the 95 % interval half-width over units of replication (n).</p>",
        leaderboard_table(rows) if len(rows) else "<p>No finished head fits yet.</p>",
        rank_table(rows) if len(rows) else "",
        '<h2 id="figures">Figures</h2>',
        *[_figure_html(k, v, captions.get(k)) for k, v in main.items()],
        '<h2 id="claims">Claims</h2>',
        f'<div class="claims">{claims}</div>',
        *(
            ['<h2 id="comparisons">Which head wins where</h2>', f'<div class="claims">{comparisons}</div>']
            if comparisons
            else []
        ),
        '<h2 id="pretraining">Pre-training: noise records and curves</h2>',
        noise_table(pretrains),
        *[_figure_html(k, v, captions.get(k)) for k, v in curves.items()],
        '<h2 id="how">How the numbers were chosen</h2>',
        *[f"<p>{p}</p>" for p in HOW_CHOSEN],
        f"<script>{_SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts)


def write_html_report(
    reader: Any,
    suite: str,
    out_path: str | Path,
    *,
    fits: pd.DataFrame | None = None,
    rows: pd.DataFrame | None = None,
    figures: Mapping[str, Path] | None = None,
    pretrains: list | None = None,
    claims: str | None = None,
    comparisons: str | None = None,
) -> Path:
    """Read what the report needs through ``reader`` (a ``TrackingReader``) and write ``out_path``.

    ``fits`` / ``rows`` / ``figures`` (the PNG paths ``report.make_report`` wrote) / ``pretrains``
    (``reader.pretrain_records()``) / ``claims`` (``claims_markdown(fits, suite)``) are reused
    when given, else read or computed; so is ``comparisons`` (``comparisons.md``; "" for a suite of
    fewer than ``MIN_HEADS`` heads, which gets no such section). Returns the path.
    """
    fits = reader.suite_fits(suite) if fits is None else fits
    rows = leaderboard_rows(fits) if rows is None or "selected" not in rows.columns else rows
    pretrains = reader.pretrain_records() if pretrains is None else pretrains
    claims = claims_markdown(fits, suite) if claims is None else claims
    if comparisons is None:
        comparisons = comparisons_markdown(fits, suite) if len(distinct_heads(fits)) >= MIN_HEADS else ""
    with tempfile.TemporaryDirectory(prefix="nmlbench-html-") as tmp:
        if figures is None:
            figures = make_report(fits, tmp, suite, spectra=spectra_for(reader, fits), claims=claims)
        pngs = {name: Path(p).read_bytes() for name, p in figures.items() if str(name).endswith(".png")}
        if pretrains and "pretrain_curves.png" not in pngs:  # make_report_from_tracking already drew it
            pngs["pretrain_curves.png"] = plot_pretrain_curves(pretrains, Path(tmp) / "curves.png").read_bytes()
    present = curve_metrics(pretrains)
    captions = (
        {
            "pretrain_curves.png": FIGURE_CAPTIONS["pretrain_curves.png"]
            + " Panels: "
            + "; ".join(f"{m}: {CURVE_LABELS.get(m, m)}" for m in present)
            + "."
        }
        if present
        else {}
    )
    page = render_html(
        suite,
        rows,
        pngs,
        claims,
        pretrains,
        captions=captions,
        comparisons_md=comparisons,
        source=f"MLflow {reader.uri} (experiment {reader.experiment!r})",
    )
    data = page.encode("utf-8")
    return atomic_write(out_path, lambda f: f.write(data))
