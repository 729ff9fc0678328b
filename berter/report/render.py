"""The report written out: Markdown and HTML files with their PNGs, and the terminal view.

All three show the same sections in the same order (:func:`_sections`): the summary, the
variant table, the differences from the Baseline, the ablation, the early-exit table, the
layer-wise table and hyperparameter importance, with each figure placed after the table it
illustrates.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from berter.errors import DataError, first_line
from berter.report.analysis import Report
from berter.report.figures import FIGURE_NAMES


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown pipe table of string cells."""
    if df.empty:
        return "_(none)_"

    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


# Which figures follow which section's table.
PLACEMENT = {
    "Variants": ["variants", "dev_vs_time", "dev_per_epoch", "hyperparameters"],
    "Early exit": ["tradeoff_exit"],
    "Layer-wise scores": ["layerwise"],
    "Hyperparameter importance": ["importance"],
}


SEEDS_NOTE = (
    "Cells are means over seeds with the 95% t-interval (mean ± half-width); \"n=1\": one "
    "seed, no interval (sweeps/run.py --seeds N)."
)
DIFF_NOTE = (
    "Differences are paired by seed: the mean over seeds of (row - Baseline) at the same seed, "
    "with a percentile bootstrap 95% interval (10,000 resamples of the seeds); * marks an "
    "interval that excludes zero."
)


def _sections(report: Report) -> list[tuple[str, str, pd.DataFrame | None]]:
    """(title, intro text, table) of the report, in order; figures follow the tables."""
    diff = f" {DIFF_NOTE}" if report.baseline is not None else ""
    axis_note = (
        "Per value of each variant axis, over all its finished trials: per seed the mean over "
        "them, then the mean over seeds with its interval; the best trial's dev score. Dev vs "
        "Baseline Value: the difference from the rows with the Baseline's value of that axis. "
        + SEEDS_NOTE + diff.replace("Baseline", "Baseline value's rows", 1)
    )
    variant_note = (
        "One row per variant: its best finished trial by mean dev score over its seeds, sorted "
        "by dev score (the shape of Table 2 of the BERTer paper). Training time is hh:mm:ss; "
        "avg exit layer and layers saved are at the calibrated early-exit operating point. "
        + SEEDS_NOTE + diff
        + (
            " Paper Dev: the paper's reported dev score for that row."
            if "Paper Dev" in report.variant_table()
            else ""
        )
    )
    exit_note = (
        "The variants that exit early, and the Baseline for reference: dev score at full depth "
        "and at the early-exit operating point chosen on the calibration slice, each task's "
        "metric there, average exit layer, layers saved and measured wall-clock speedup. "
        + SEEDS_NOTE + diff
    )
    imp_intro = (
        f"Optuna {report.importance_evaluator} importance of each varying hyperparameter for the "
        "dev score, from the finished trials."
        if report.importance
        else ""
    )
    differences = report.differences_table()
    early = report.early_exit_table()
    if early.empty:
        exit_note = "No variant exits early."
    return [
        ("Variants", variant_note, report.variant_table()),
        (
            "Differences from the Baseline",
            "Per variant (its best trial), every metric minus the Baseline's. " + DIFF_NOTE,
            differences if not differences.empty else None,
        ),
        ("Ablation", axis_note, report.ablation_table()),
        ("Early exit", exit_note, early if not early.empty else None),
        (
            "Layer-wise scores",
            "Per curve, the best exit layer of the best trial of each strategy and the score "
            "there vs at the last layer.",
            report.layerwise_table(),
        ),
        (
            "Hyperparameter importance",
            imp_intro,
            report.importance_table() if report.importance else None,
        ),
    ]


def to_markdown(report: Report) -> str:
    """The report as GitHub Markdown; figures are linked as <name>.png next to it."""
    figs = {f.name: f for f in report.figures}
    out = [f"# Sweep report: {report.name}", "", f"Results: `{report.source}`", "", report.summary, "",
           report.status_line(), ""]  # fmt: skip
    for title, intro, table in _sections(report):
        out += [f"## {title}", ""]
        if intro:
            out += [intro, ""]
        if table is not None:
            out += [markdown_table(table), ""]
        for name in PLACEMENT.get(title, []):
            if name in figs:
                f = figs[name]
                out += [f"### {f.title}", "", f"![{f.title}]({f.filename})", "", f.caption, ""]
    if report.notes:
        out += ["## Notes", "", *[f"- {n}" for n in report.notes], ""]
    return "\n".join(out)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; white-space: nowrap; }
td:first-child { white-space: normal; min-width: 12em; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; } .muted { color: #666; }
figure { margin: 1em 0 2em; } figcaption { color: #555; font-size: 0.9em; }
"""


def to_html(report: Report) -> str:
    """The report as one HTML page; figures are linked as <name>.png next to it."""
    esc = html.escape
    figs = {f.name: f for f in report.figures}
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Sweep report: {esc(report.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>Sweep report: {esc(report.name)}</h1>",
        f'<p class="muted">Results: <code>{esc(report.source)}</code></p>',
        f"<p>{esc(report.summary)}</p>",
        f'<p class="muted">{esc(report.status_line())}</p>',
    ]
    for title, intro, table in _sections(report):
        out.append(f"<h2>{esc(title)}</h2>")
        if intro:
            out.append(f"<p>{esc(intro)}</p>")
        if table is not None:
            out.append(
                table.to_html(index=False, border=0, escape=True)
                if not table.empty
                else "<p>(none)</p>"
            )
        for name in PLACEMENT.get(title, []):
            if name in figs:
                f = figs[name]
                out.append(
                    f'<figure><h3>{esc(f.title)}</h3><img src="{esc(f.filename)}" alt="{esc(f.title)}">'
                    f"<figcaption>{esc(f.caption)}</figcaption></figure>"
                )
    if report.notes:
        out.append(
            "<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in report.notes) + "</ul>"
        )
    out.append("</body></html>")
    return "\n".join(out)


def write_report(report: Report, out_dir: str | Path) -> list[Path]:
    """Write report.md, report.html and the figures' PNGs into ``out_dir`` (a local
    directory); returns the paths written. Figures of an earlier run that this one skipped
    are removed so the folder matches the report."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        keep = {f.filename for f in report.figures}
        for stale in FIGURE_NAMES:
            if f"{stale}.png" not in keep:
                (out / f"{stale}.png").unlink(missing_ok=True)
        for f in report.figures:
            (out / f.filename).write_bytes(f.png)
            written.append(out / f.filename)
        (out / "report.md").write_text(to_markdown(report), encoding="utf-8")
        (out / "report.html").write_text(to_html(report), encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot write the report to {out}: {first_line(exc)}") from None
    return [out / "report.md", out / "report.html", *written]


# Terminal headers: short, so that Table 2's columns fit a 100-column terminal.
SHORT_HEADERS = {
    "Dev Score": "Dev", "Paraphrase": "Para", "Training Time": "Time", "Avg Exit Layer": "Exit L",
    "Layers Saved": "Saved", "Wall Speedup": "Speedup", "Paper Dev": "Paper", "Best Trial": "Trial",
}  # fmt: skip


def _fit(title: str, table: pd.DataFrame, width: int) -> list[tuple[str, pd.DataFrame]]:
    """A table cut into column groups that fit ``width`` characters, each repeating the
    first (name) column; the later parts titled "(continued)"."""
    table = table.rename(columns=SHORT_HEADERS)
    sizes = [max(len(str(c)), *(len(str(x)) for x in table[c])) + 3 for c in table.columns]
    first = min(sizes[0], 32)  # names wrap
    parts, current, used = [], [], first
    for i, size in enumerate(sizes[1:], start=1):
        if current and used + size > width:
            parts.append(current)
            current, used = [], first
        current.append(i)
        used += size
    parts.append(current)
    return [
        (title if k == 0 else f"{title} (continued)", table.iloc[:, [0, *cols]])
        for k, cols in enumerate(parts)
    ]


def print_report(report: Report, console: Any = None) -> None:
    """The summary and tables on the terminal (rich). The variant table is split in two
    (metrics, then trial and hyperparameters) to fit a terminal; the files keep it whole."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or redirected: do not squeeze into 80 columns
            console = Console(width=max(console.width, 200))
    console.print(f"[bold]Sweep report: {report.name}[/bold]  ({report.source})", highlight=False)
    console.print(report.summary, highlight=False)
    console.print(report.status_line(), style="dim", highlight=False)
    tables = []
    for title, _, table in _sections(report):
        if title == "Variants" and not table.empty:
            split = table.columns.get_loc("Trials")
            tables.append((title, table.iloc[:, :split]))
            tables.append(
                (
                    "Best trial and hyperparameters per variant",
                    table.iloc[:, [0, *range(split, table.shape[1])]],
                )
            )
        elif table is not None and not table.empty:
            tables.append((title, table))
    tables = [part for title, table in tables for part in _fit(title, table, console.width)]
    for title, table in tables:
        table = table.rename(columns=SHORT_HEADERS)
        t = Table(title=title, title_justify="left")
        for i, col in enumerate(table.columns):
            if i == 0:  # names wrap; numbers keep their full width
                t.add_column(str(col), justify="left", overflow="fold", min_width=16)
            else:
                width = max(len(str(x)) for x in table[col])
                t.add_column(str(col), justify="right", no_wrap=True, min_width=width)
        for row in table.itertuples(index=False):
            t.add_row(*(str(x) for x in row))
        console.print(t)
    for note in report.notes:
        console.print(f"note: {note}", style="yellow", highlight=False)
