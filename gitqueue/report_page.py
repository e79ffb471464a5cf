"""The page of ``gitqueue report``: one self-contained HTML file, drawn with plotly.

plotly.js is inlined (no CDN, no server: the file opens offline and can be mailed or
published as a forge's pages). Each figure is plotly JSON that the page hands to
``Plotly.newPlot``; the results table is plain JavaScript over the rows embedded as JSON.
Large sweeps stay quick to draw: the plots sample at most :data:`PLOT_POINTS` tasks (and say
so), the timeline turns into a heat map of busy workers past :data:`TIMELINE_RUNS` runs, and
the table shows a page of rows at a time over all of them.
"""

from __future__ import annotations

import html
import json
import math
import random
import re
from importlib import resources
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from gitqueue.progress import format_duration, utc
from gitqueue.report_data import Row, RunSpan, Sweep, is_number

PLOT_POINTS = 5000  # tasks drawn in the parallel-coordinates and per-arg plots
TIMELINE_RUNS = 3000  # runs drawn as bars; more become a heat map of busy workers
TIME_POINTS = 2000  # points of the tasks-done-over-time curve
TIME_BINS = 200
TABLE_PAGE = 200
COLOURS = {
    "done": "#2ca02c",
    "failed": "#d62728",
    "reaped": "#ff7f0e",
    "running": "#1f77b4",
}
OTHER_COLOUR = "#9e9e9e"  # interrupted, requeued, cancelled: runs cut short without a verdict
MARGIN = {"l": 60, "r": 20, "t": 30, "b": 50}


def _sample(items: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` of ``items``, chosen the same way each time, in their order."""
    if len(items) <= limit:
        return items
    keep = sorted(random.Random(0).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def _thin(points: list[Any], limit: int) -> list[Any]:
    """Evenly spaced ``points`` (the last one kept): a curve's shape with fewer points."""
    if len(points) <= limit:
        return points
    step = len(points) / limit
    return [points[int(i * step)] for i in range(limit)] + [points[-1]]


# ---------------------------------------------------------------- figures


class Chart:
    """A plotly figure whose long arrays are kept aside: plotly checks every trace's
    attributes as it is built, but checking 100,000 numbers one by one would take seconds
    (plotly.js needs no such check), so each trace is built without them and they are put
    into its JSON at the end."""

    def __init__(self, fig: go.Figure | None = None) -> None:
        self.fig = fig if fig is not None else go.Figure()
        self.arrays: list[dict[str, Any]] = []

    def add(self, trace: Any, *, row: int | None = None, col: int | None = None, **arrays: Any) -> None:
        self.fig.add_trace(trace, row=row, col=col)
        self.arrays.append(arrays)

    def to_dict(self) -> dict[str, Any]:
        data = self.fig.to_plotly_json()
        for trace, arrays in zip(data["data"], self.arrays, strict=True):
            trace.update(arrays)
        return {"data": data["data"], "layout": data["layout"]}


def done_over_time(sweep: Sweep) -> Chart | None:
    """Cumulative runs ended as done, and as failed or reaped, against time."""
    chart = Chart()
    for name, outcomes, colour in (("done", {"done"}, COLOURS["done"]),
                                   ("failed or reaped runs", {"failed", "reaped"}, COLOURS["failed"])):  # fmt: skip
        ends = sorted(run.end for run in sweep.runs if run.outcome in outcomes and run.end is not None)
        if not ends:
            continue
        points = _thin(list(enumerate(ends, 1)), TIME_POINTS)
        chart.add(
            go.Scatter(name=name, mode="lines+markers" if len(points) <= 60 else "lines",
                       line={"shape": "hv", "color": colour}),
            x=[utc(t) for _, t in points],
            y=[n for n, _ in points],
        )  # fmt: skip
    if not chart.arrays:
        return None
    chart.fig.update_layout(
        margin=MARGIN, height=320, xaxis_title="time (UTC)", yaxis_title="tasks", hovermode="x unified"
    )
    return chart


def _outcome_group(outcome: str) -> str:
    return outcome if outcome in COLOURS else "cut short"


def timeline(sweep: Sweep) -> Chart | None:
    """A lane per worker with a bar per run, coloured by how it ended; failures and reaps marked."""
    if not sweep.runs:
        return None
    lanes = sorted({run.worker for run in sweep.runs}, key=_natural)  # box2 before box10
    if len(sweep.runs) > TIMELINE_RUNS:
        chart = _busy_heatmap(sweep, lanes)
    else:
        chart = Chart()
        width = max(2, min(14, 300 // len(lanes)))
        groups: dict[str, list[RunSpan]] = {}
        for run in sweep.runs:
            groups.setdefault(_outcome_group(run.outcome), []).append(run)
        for name, runs in groups.items():
            _bars(chart, name, runs, sweep.made_at, width)
    marks = _sample([r for r in sweep.runs if r.outcome in ("failed", "reaped") and r.end is not None], PLOT_POINTS)
    for outcome, symbol in (("failed", "x"), ("reaped", "diamond")):
        chosen = [r for r in marks if r.outcome == outcome]
        if chosen:
            chart.add(
                go.Scatter(
                    mode="markers",
                    name=f"{outcome} (end)",
                    marker={
                        "symbol": symbol,
                        "size": 10 if len(marks) <= 200 else 5,
                        "color": COLOURS[outcome],
                        "line": {"width": 1 if len(marks) <= 200 else 0},
                    },
                    hoverinfo="text+x",
                ),
                x=[utc(r.end or 0) for r in chosen],
                y=[r.worker for r in chosen],
                text=[f"{r.task} attempt {r.attempt}: {outcome}" for r in chosen],
            )
    chart.fig.update_layout(
        margin={**MARGIN, "l": 140, "t": 30 if len(sweep.runs) <= TIMELINE_RUNS else 60},
        height=min(1400, 120 + 28 * len(lanes)),
        xaxis_title="time (UTC)",
        yaxis={"type": "category", "categoryorder": "array", "categoryarray": lanes[::-1]},
        legend={"orientation": "h", "y": -0.25},
    )
    return chart


def _natural(name: str) -> list[tuple[int, int | str]]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part]


def _bars(chart: Chart, name: str, runs: list[RunSpan], now: float, width: int) -> None:
    xs: list[str | None] = []
    ys: list[str | None] = []
    texts: list[str | None] = []
    for run in runs:
        end = run.end if run.end is not None else now
        label = f"{run.task} attempt {run.attempt}: {run.outcome}, {format_duration(end - run.start)}"
        xs += [utc(run.start), utc(end), None]
        ys += [run.worker, run.worker, None]
        texts += [label, label, None]
    colour = COLOURS.get(name, OTHER_COLOUR)
    trace = go.Scatter(name=name, mode="lines+markers", hoverinfo="text", line={"color": colour, "width": width},
                       marker={"size": 3, "color": colour})  # fmt: skip
    chart.add(trace, x=xs, y=ys, text=texts)


def _busy_heatmap(sweep: Sweep, lanes: list[str]) -> Chart:
    """How busy each worker was in each slice of time (runs it held / slice length)."""
    start = min(run.start for run in sweep.runs)
    stop = max(run.end if run.end is not None else sweep.made_at for run in sweep.runs)
    width = max((stop - start) / TIME_BINS, 1e-3)
    row = {lane: i for i, lane in enumerate(lanes)}
    busy = [[0.0] * TIME_BINS for _ in lanes]
    for run in sweep.runs:
        end = run.end if run.end is not None else sweep.made_at
        first, last = int((run.start - start) / width), int((end - start) / width)
        for b in range(max(0, first), min(TIME_BINS - 1, last) + 1):
            low, high = start + b * width, start + (b + 1) * width
            busy[row[run.worker]][b] += max(0.0, min(end, high) - max(run.start, low)) / width
    chart = Chart()
    chart.add(
        go.Heatmap(
            colorscale="Blues",
            colorbar={"title": {"text": "runs held"}},
            name="busy",
            hovertemplate="%{y}<br>%{x}<br>%{z:.2f} runs held<extra></extra>",
        ),
        z=[[round(v, 3) for v in lane] for lane in busy],
        x=[utc(start + (b + 0.5) * width) for b in range(TIME_BINS)],
        y=lanes,
    )
    chart.fig.add_annotation(
        text=f"{len(sweep.runs):,} runs: each cell is how many runs its worker held in that slice of time",
        xref="paper", yref="paper", x=0, y=1.08, showarrow=False,
    )  # fmt: skip
    return chart


def arg_names(rows: list[Row]) -> list[str]:
    """Args whose values are scalars, in the order they first appear."""
    names: dict[str, None] = {}
    for row in rows:
        for key, value in row.args.items():
            if not isinstance(value, dict | list):
                names.setdefault(key, None)
    return list(names)


def _axis(values: list[Any]) -> tuple[list[float], dict[str, Any]]:
    """Values on one parallel axis: numbers as they are (on a log scale when they span
    decades, as learning rates do), anything else as categories. An axis with few distinct
    values is labelled with exactly those."""
    if all(is_number(v) and math.isfinite(v) for v in values):
        distinct = sorted(set(values))
        log = distinct[0] > 0 and distinct[-1] / distinct[0] >= 100
        scale = math.log10 if log else float
        ticks: dict[str, Any] = {}
        if len(distinct) <= 12 or log:
            shown = distinct if len(distinct) <= 12 else [10.0**e for e in range(
                math.floor(math.log10(distinct[0])), math.ceil(math.log10(distinct[-1])) + 1)]  # fmt: skip
            ticks = {"tickvals": [scale(v) for v in shown], "ticktext": [f"{v:g}" for v in shown]}
        return [scale(v) for v in values], ticks
    labels = sorted({_label(v) for v in values}, key=lambda s: (len(s), s))
    code = {label: i for i, label in enumerate(labels)}
    return [float(code[_label(v)]) for v in values], {"tickvals": list(range(len(labels))), "ticktext": labels}


def _label(value: Any) -> str:
    if value is None:
        return "(none)"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def parallel(sweep: Sweep) -> Chart | None:
    """Parallel coordinates: one line per done task, an axis per arg, the metric last."""
    chosen = _sample(sweep.metric_values(), PLOT_POINTS)
    names = arg_names([row for row, _ in chosen])
    if not chosen or not names:
        return None
    dims = []
    for name in names:
        values, ticks = _axis([row.args.get(name) for row, _ in chosen])
        dims.append({"label": name, "values": values, **ticks})
    metric = [value for _, value in chosen]
    dims.append({"label": sweep.metric, "values": metric})
    chart = Chart()
    chart.add(
        go.Parcoords(
            line={"colorscale": "Viridis", "showscale": True}, dimensions=[{"label": d["label"]} for d in dims]
        ),
        dimensions=dims,
        line={"color": metric, "colorscale": "Viridis", "showscale": True},
    )
    chart.fig.update_layout(margin={"l": 60, "r": 60, "t": 60, "b": 30}, height=420)
    return chart


def per_arg(sweep: Sweep) -> Chart | None:
    """The metric against each arg, one small plot per arg."""
    chosen = _sample(sweep.metric_values(), PLOT_POINTS)
    names = arg_names([row for row, _ in chosen])
    if not chosen or not names:
        return None
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    chart = Chart(make_subplots(rows=rows, cols=cols, subplot_titles=names, shared_yaxes=True))
    fig = chart.fig
    for index, name in enumerate(names):
        points = [(row, value) for row, value in chosen if name in row.args]
        xs = [row.args[name] if is_number(row.args[name]) else _label(row.args[name]) for row, _ in points]
        chart.add(
            go.Scatter(
                mode="markers",
                name=name,
                showlegend=False,
                marker={"size": 7, "opacity": 0.7},
                hovertemplate=f"%{{text}}<br>{name}=%{{x}}<br>{sweep.metric}=%{{y}}<extra></extra>",
            ),
            row=index // cols + 1,
            col=index % cols + 1,
            x=xs,
            y=[v for _, v in points],
            text=[row.id for row, _ in points],
        )
        positive = [float(x) for x in xs if is_number(x) and float(x) > 0]
        if len(positive) == len(xs) and len(set(positive)) > 2 and max(positive) / min(positive) >= 100:
            fig.update_xaxes(type="log", row=index // cols + 1, col=index % cols + 1)
    fig.update_yaxes(title_text=sweep.metric, col=1)
    fig.update_layout(margin={**MARGIN, "t": 60}, height=300 * rows)
    return chart


# ---------------------------------------------------------------- the page


def table_data(sweep: Sweep) -> dict[str, Any]:
    """Columns and rows of the results table (args and result flattened one level)."""
    args = list(dict.fromkeys(key for row in sweep.rows for key in row.args))
    results = list(dict.fromkeys(k for row in sweep.rows if isinstance(row.result, dict) for k in row.result))
    plain = any(row.result is not None and not isinstance(row.result, dict) for row in sweep.rows)
    columns = ["id", "state", *(f"args.{a}" for a in args), *(f"result.{r}" for r in results)]
    columns += ["result"] * plain + ["attempts", "duration", "worker", "error"]
    rows = []
    for row in sweep.rows:
        result = row.result if isinstance(row.result, dict) else {}
        cells = [row.id, row.state, *(_cell(row.args.get(a)) for a in args), *(_cell(result.get(r)) for r in results)]
        if plain:
            cells.append(None if isinstance(row.result, dict) else _cell(row.result))
        cells += [row.attempts, row.duration, row.worker, row.error]
        rows.append(cells)
    return {"columns": columns, "rows": rows, "page": TABLE_PAGE}


def _cell(value: Any) -> Any:
    """A table cell: numbers stay numbers (to sort by), anything else becomes text."""
    kind = type(value)
    if kind is str or kind is int or value is None or (kind is float and math.isfinite(value)):
        return value
    return json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)


def script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element, whatever strings the tasks hold."""
    text = data if isinstance(data, str) else json.dumps(data, default=str, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(char, escape)
    return text


def figures(sweep: Sweep) -> dict[str, Chart | None]:
    return {
        "done-over-time": done_over_time(sweep),
        "timeline": timeline(sweep),
        "parallel": parallel(sweep),
        "per-arg": per_arg(sweep),
    }


def _section(plot_id: str, title: str, fig: Chart | None, note: str, empty: str) -> str:
    if fig is None:
        return f'<section><h2>{title}</h2><p class="empty">{html.escape(empty)}</p></section>'
    return (
        f'<section><h2>{title}</h2><p class="note">{html.escape(note)}</p>'
        f'<div class="plot" id="{plot_id}" data-plot="{plot_id}"></div></section>'
    )


def _summary(sweep: Sweep) -> str:
    counts = sweep.counts
    tiles = "".join(
        f'<div class="tile {state}"><span class="n">{n:,}</span><span>{state}</span></div>'
        for state, n in counts.items()
    )
    if sweep.problems:
        tiles += f'<div class="tile invalid"><span class="n">{len(sweep.problems):,}</span><span>invalid</span></div>'
    prog = sweep.progress
    bar = (
        f'<div class="bar" title="{prog.finished:,} of {prog.total:,} finished">'
        f'<div style="width:{100 * prog.fraction:.1f}%"></div></div>'
        f'<p class="eta">{prog.finished:,} of {prog.total:,} tasks finished ({100 * prog.fraction:.0f}%): '
        f"{html.escape(prog.describe())}</p>"
    )
    return f'<section id="summary"><div class="tiles">{tiles}</div>{bar}</section>'


def _notes(sweep: Sweep) -> dict[str, str]:
    done = len(sweep.metric_values())
    sampled = f" ({PLOT_POINTS:,} of {done:,} done tasks, sampled)" if done > PLOT_POINTS else ""
    runs = len(sweep.runs)
    return {
        "done-over-time": "Runs that ended, counted as they ended.",
        "timeline": f"{runs:,} runs, a lane per worker, from each task's record of its attempts; failures and "
        "reaps (a worker that stopped answering) are marked where they ended."
        + (" Grey: runs cut short (interrupted, requeued, cancelled)." if runs <= TIMELINE_RUNS else ""),
        "parallel": f"One line per done task, coloured by {sweep.metric}{sampled}. Drag along an axis to select.",
        "per-arg": f"{sweep.metric} of each done task against each arg{sampled}.",
    }


def _history(sweep: Sweep) -> str:
    if not sweep.commits:
        return ""
    rows = "".join(
        f"<tr><td>{utc(c.time)[:19]}</td><td>{html.escape(c.author)}</td><td>{html.escape(c.subject)}</td>"
        f"<td>{'by hand' if c.by_hand else ''}</td><td><code>{c.commit[:10]}</code></td></tr>"
        for c in sweep.commits[:30]
    )
    return (
        '<section><h2>Latest changes to the queue</h2><p class="note">The queue branch\'s last commits, newest '
        'first: who changed what.</p><table class="history"><thead><tr><th>time (UTC)</th><th>author</th>'
        f"<th>change</th><th></th><th>commit</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def _problems(sweep: Sweep) -> str:
    if not sweep.problems:
        return ""
    items = "".join(f"<li>{html.escape(p.message)}</li>" for p in sweep.problems[:200])
    note = '<p class="note">Workers skip them; <code>gitqueue validate</code> says more.</p>'
    return f"<section><h2>Invalid task files</h2>{note}<ul>{items}</ul></section>"


def _asset(name: str) -> str:
    """The page's own CSS, JavaScript and HTML, shipped in gitqueue/assets/."""
    return resources.files("gitqueue").joinpath("assets", name).read_text(encoding="utf-8")


def render_page(sweep: Sweep) -> str:
    """The whole HTML page for ``sweep``."""
    figs = figures(sweep)
    notes = _notes(sweep)
    no_metric = "No done task has a numeric result yet." if sweep.metric is None else (
        f"No done task has a number for {sweep.metric} yet.")  # fmt: skip
    sections = [
        _summary(sweep),
        _section("done-over-time", "Tasks done over time", figs["done-over-time"], notes["done-over-time"],
                 "No run has ended yet."),
        _section("timeline", "Runs per worker", figs["timeline"], notes["timeline"], "No run has started yet."),
        _section("parallel", f"Args against {html.escape(str(sweep.metric))}", figs["parallel"], notes["parallel"],
                 no_metric),
        _section("per-arg", f"{html.escape(str(sweep.metric))} against each arg", figs["per-arg"], notes["per-arg"],
                 no_metric),
        _asset("table.html"),
        _history(sweep),
        _problems(sweep),
    ]  # fmt: skip
    plots = {name: chart.to_dict() for name, chart in figs.items() if chart is not None}
    where = f" · tasks where <code>{html.escape(sweep.where)}</code>" if sweep.where else ""
    tip = f" at commit <code>{sweep.tip[:10]}</code>" if sweep.tip else ""
    return _asset("report.html").format(
        title=html.escape(f"gitqueue report: {sweep.queue}"),
        queue=html.escape(sweep.queue),
        subtitle=f"made {utc(sweep.made_at)[:19]} UTC{tip}{where}",
        css=_asset("report.css"),
        plotly=get_plotlyjs(),
        sections="\n".join(sections),
        plots=script_json(plots),
        table=script_json(table_data(sweep)),
        script=_asset("report.js"),
    )


__all__ = ["PLOT_POINTS", "TIMELINE_RUNS", "figures", "render_page", "table_data"]
