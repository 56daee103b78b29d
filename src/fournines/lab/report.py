"""The lab's reports: a terminal table (rich), a self-contained HTML page, and JSON.

The HTML has no scripts, fonts, stylesheets or images from anywhere: every
plot is inline SVG drawn here, so the file opens on a machine with no network.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .confidence import Difference, Interval
from .rootcause import accuracy
from .runner import LabResult
from .stats import BEHIND_LAG, BEHIND_SHARE, OBJECTIVE, VariantSummary
from .steps import step_lines

__all__ = ["comparison_line", "plot_svg", "render_html", "render_summary_svg", "render_table",
           "write_json"]

COLORS = {"unprotected": "#d1495b", "protected": "#2e86ab"}
FAULT_FILL = "#f4a259"
WIDTH, HEIGHT = 860, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 24, 34


def _pct(value: float) -> str:
    return f"{value * 100:.3f} %"


# Bounds are rounded outward (the lower one down, the upper one up) so that the printed
# interval is never narrower than the computed one: a lower bound of 99.98996 % must not
# read as 99.990 %, the very number it falls short of.
def _down(value: float) -> str:
    return f"{math.floor(value * 100_000) / 1000:.3f}"


def _up(value: float) -> str:
    return f"{math.ceil(value * 100_000) / 1000:.3f}"


def _with_interval(value: float, interval: Interval) -> str:
    """``99.990 % [99.877, 100.000]``: the value and its 95 % interval, in percent."""
    return f"{_pct(value)} [{_down(interval.lower)}, {_up(interval.upper)}]"


def _points(value: float, digits: int = 3) -> str:
    return f"{value * 100:+.{digits}f}"


def comparison_line(difference: Difference | None) -> str:
    """``protected - unprotected: +x.xxx pts [lo, hi]`` (percentage points, 95 %).

    The minus is the sign U+2212, as in print.
    """
    if difference is None:
        return ""
    lower = math.floor(difference.lower * 100_000) / 100_000
    upper = math.ceil(difference.upper * 100_000) / 100_000
    return (f"protected \u2212 unprotected: {_points(difference.estimate)} pts "
            f"[{_points(lower)}, {_points(upper)}] "
            f"({difference.confidence * 100:g} % interval, {difference.method})")


STATISTICS_NOTE = (
    "[lo, hi]: 95 % confidence interval (Clopper-Pearson exact); the 99.99 % objective "
    "is judged on the one-sided 95 % lower bound: \"held\" only when that bound is at or "
    "above 99.99 %.")
"""The note under the table: what the brackets are and what the verdict rests on."""


def _lower_bound(summary: VariantSummary) -> str:
    return f"{_down(summary.objective.lower)} %"


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value * 1000:.0f} ms"


def _step_servers(result: LabResult) -> str:
    return "; ".join(f"{k}: {v}" for k, v in result.step_servers.items()) or "no servers needed"


def _steps_html(result: LabResult) -> str:
    if not result.steps:
        return ""
    esc = html.escape
    items = "".join(
        f'<li class="{"bad" if " BROKEN" in line or " NOT " in line else ""}">{esc(line)}</li>'
        for line in step_lines(result.steps))
    return (f'<h2 id="steps">Steps: deploys, database, queue</h2>\n<p class="note">'
            f"{esc(_step_servers(result))}. Payments are checked in the ledger at the end: "
            "acknowledged and present, applied once (two entries that sum to zero), money "
            "conserved; confirmations are counted per applied payment.</p>\n"
            f"<ul>{items}</ul>\n")


def _registry_html(result: LabResult) -> str:
    registry = result.registry
    if not registry:
        return ""
    esc = html.escape
    return (f"<p>Discovery: the protected fleet ran behind etcd at {esc(registry['url'])} "
            f"({esc(registry['etcd'])}; keys under {esc(registry['prefix'])}): every "
            f"service registered itself, and order and the gateway found their "
            f"dependencies through it, with {registry['payment_instances']} payment "
            f"instances sharing the modelled capacity. The unprotected fleet used fixed "
            f"URLs and one payment instance.</p>\n")


def render_table(result: LabResult, console: Any) -> None:
    """Print the per-variant table, the targets, and where failures came from."""
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"fournines lab: scenario {result.scenario.name!r}, "
                        f"{result.rate:.0f} req/s, seed {result.seed}")
    table.add_column("")
    for variant in result.summaries:
        table.add_column(variant, justify="right")
    rows: list[tuple[str, Callable[[VariantSummary], str]]] = [
        ("requests", lambda s: f"{s.requests}"),
        ("availability (full) [95 % CI]",
         lambda s: _with_interval(s.availability_full, s.availability_full_interval)),
        ("availability (full + degraded) [95 % CI]",
         lambda s: _with_interval(s.availability, s.availability_interval)),
        ("one-sided 95 % lower bound", _lower_bound),
        ("failed", lambda s: f"{s.failed}"),
        ("degraded answers by fallback", _sources),
        ("p50 / p95 / p99", lambda s: f"{_ms(s.p50)} / {_ms(s.p95)} / {_ms(s.p99)}"),
        ("p99 of the worst second", lambda s: _ms(s.worst_second_p99)),
        ("breaker openings", lambda s: f"{s.breaker_openings}"),
        ("retries", lambda s: f"{s.retries}"),
        ("sheds", lambda s: f"{s.sheds}"),
        ("error budget consumed (99.99 %)", lambda s: f"{s.budget_consumed * 100:.0f} %"),
        (_SEND_LAG_ROW, lambda s: ("[bold red]" if s.generator_behind else "")
         + s.send_lag_text),
        ("verdict", lambda s: _STYLE[s.objective.outcome] + s.verdict),
    ]
    for label, value in rows:
        table.add_row(label, *(value(s) for s in result.summaries.values()))
    console.print(table)
    console.print(STATISTICS_NOTE, highlight=False, markup=False)
    if result.comparison is not None:
        console.print(comparison_line(result.comparison), highlight=False)
    console.print(
        f"capacity: payment measured at {result.capacity:.0f} req/s "
        f"(model {result.scenario.payment.concurrency} workers x "
        f"{result.scenario.payment.service_time * 1000:.0f} ms = {result.capacity_model:.0f}/s); "
        f"load {result.rate:.0f} req/s, overloads: {_burst(result)}"
    )
    cpu = [result.timings.get(f"{v}_generator_cpu", 0.0) / max(
        result.timings.get(f"{v}_load", 1.0), 1e-9) for v in result.summaries]
    lags = "; ".join(f"{v} {s.send_lag_text}" for v, s in result.summaries.items())
    behind = any(s.generator_behind for s in result.summaries.values())
    console.print(f"load generator: at most {max(cpu, default=0.0):.0%} of one core; "
                  f"send lag {lags}", style="bold red" if behind else None,
                  highlight=False, markup=False)
    for variant, cores in result.cpu_cores.items():
        console.print(f"{variant} CPU during the load: {_cores(cores)}", highlight=False,
                      markup=False)
    if behind:
        console.print("the load generator fell behind its schedule: the latencies above "
                      "include its own delay (the machine was busy)", style="bold red",
                      highlight=False, markup=False)
    for variant, budgets in result.tracker_budget.items():
        for key, remaining in sorted(budgets.items()):
            # The service's own view: it never sees requests that timed out before they
            # reached it, so the load generator's numbers above are the ones that count.
            console.print(f"{variant} {key}: its own BudgetTracker says {remaining:.1%} of "
                          "the 99.99 % budget is left (its view: only requests that reached it)")
    phases = Table(*PHASE_HEADER, title="answers per phase")
    for row in phase_rows(result):
        phases.add_row(*row)
    console.print(phases)
    for name, target in result.targets().items():
        mark = "[green]met[/]" if target["met"] else "[red]NOT met[/]"
        console.print(f"  target {name}: {mark} ({_target_value(name, target)})")
    for summary in result.summaries.values():
        if summary.failures_by_phase:
            console.print(f"[bold]{summary.variant}[/]: where the {summary.failed} failures "
                          f"came from")
            for phase, kinds in summary.failures_by_phase.items():
                detail = ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items(),
                                                                   key=lambda kv: -kv[1]))
                console.print(f"  {phase}: {detail}")
    for line in root_cause_lines(result):
        console.print(line, highlight=False, markup=False)
    if result.steps:
        console.print("[bold]steps[/] (deploys, database, queue; "
                      f"{_step_servers(result)})")
        for line in step_lines(result.steps):
            console.print(f"  {line}", highlight=False, markup=False,
                          style="bold red" if " BROKEN" in line or " NOT " in line else None)
    errors = [e for e in result.fault_log if "error" in e]
    for entry in errors:
        console.print(f"[red]fault action failed[/]: {entry['variant']} {entry['fault']} "
                      f"{entry['action']}: {entry['error']}")


_STYLE = {"held": "[green]", "not proven": "[yellow]", "missed": "[red]"}


def _sources(summary: VariantSummary) -> str:
    return ", ".join(f"{k} {v}" for k, v in summary.degraded_by_source.items()) or "none"


def _burst(result: LabResult) -> str:
    parts = [f"{f.factor:g}x = {f.factor * result.capacity:.0f} req/s for {f.duration:.1f} s"
             for f in result.scenario.faults if f.kind == "overload"]
    # a capacity loss is an overload too: the same arrivals on a third of the capacity
    parts += [f"capacity lost to 1/{f.factor:g} = {result.capacity / f.factor:.0f} req/s for "
              f"{f.duration:.1f} s" for f in result.scenario.faults
              if f.kind == "capacity_loss"]
    return ", ".join(parts) or "none"


def phase_rows(result: LabResult) -> list[tuple[str, str, str, str, str]]:
    """The rows of the per-phase table (see :data:`PHASE_HEADER`).

    Per phase: unprotected answers within 1 s, protected full and degraded ones,
    and (after a fault) the protected fleet's time to full service.
    """
    protected = result.summaries.get("protected")
    unprotected = result.summaries.get("unprotected")
    first = protected or unprotected
    phases = list(first.phases) if first is not None else []
    rows = []
    for phase in phases:
        u = unprotected.phases.get(phase) if unprotected else None
        p = protected.phases.get(phase) if protected else None
        recovery = "-"
        if protected is not None and phase.startswith("after "):
            back = protected.recovery.get(phase.removeprefix("after "), 0.0)
            recovery = "not back" if back is None else f"{back:.1f} s"
        answered = "-"
        if u is not None:
            answered = f"{u.answered_in_time} of {u.requests}"
            if u.in_time_after_end:
                answered += f" ({u.in_time_after_end} after the fault ended)"
        rows.append((phase, answered,
                     f"{p.full_in_time} of {p.requests}" if p else "-",
                     str(p.degraded) if p else "-", recovery))
    return rows


def root_cause_lines(result: LabResult) -> list[str]:
    """The root-cause ranking in plain lines: per fault, the suspects and the truth."""
    if not result.root_cause:
        return []
    lines = ["root cause (protected fleet; z-scores of each service's own signals, the "
             "deepest departed service first):"]
    for ranking in result.root_cause:
        names = ", ".join(
            f"{s.service} ({s.signal} z={min(s.score, 999):.0f}"
            + (f", +{s.onset:.0f} s)" if s.onset is not None else ", not departed)")
            for s in ranking.suspects)
        mark = ("" if ranking.truth is None
                else " - right" if ranking.hit(1) else f" - WRONG, it was {ranking.truth}")
        lines.append(f"  {ranking.fault}: {names}{mark}")
    score = accuracy(result.root_cause)
    if score.faults:
        lines.append(f"  top-1 {score.top1} of {score.faults} ({score.top1 / score.faults:.0%}), "
                     f"top-3 {score.top3} of {score.faults}; always naming the most frequent "
                     f"cause would get {score.naive_top1} of {score.faults}")
    return lines


PHASE_HEADER = ("phase", "unprotected: answers within 1 s", "protected: full within 1 s",
                "protected: degraded", "protected: full service back after")


def _target_value(name: str, target: dict[str, Any]) -> str:
    value = target["value"]
    if "every phase" in name:
        if value is None:
            return "no phase with both variants"
        return f"worst phase {target['phase']}: {value:+d} pages"
    if "full service back" in name:
        if value is None:
            return f"not back after {target['fault']} before the next fault or the end"
        return f"slowest after {target['fault']}: {value:.1f} s"
    if "p99" in name:
        return _ms(value)
    if "beats" in name:
        return (f"{_points(value)} points [{_points(math.floor(target['lower'] * 1e5) / 1e5)}, "
                f"{_points(math.ceil(target['upper'] * 1e5) / 1e5)}]")
    if "lower bound" in name:
        return f"{_down(value)} %"
    if "upper bound" in name:
        return f"{_up(value)} %"
    return _pct(value)


# -- SVG --------------------------------------------------------------------------------


def _nice_max(value: float) -> float:
    if value <= 0 or math.isnan(value):
        return 1.0
    exponent = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * exponent:
            return step * exponent
    return 10.0 * exponent


def plot_svg(
    title: str,
    duration: float,
    series: Sequence[tuple[str, str, Sequence[float | None]]],
    faults: Sequence[tuple[float, float, str]],
    *,
    y_label: str = "",
    y_min: float | None = None,
    y_max: float | None = None,
    y_format: str = "{:g}",
    steps: bool = False,
    hline: tuple[float, str] | None = None,
    ticks: int = 4,
) -> str:
    """One line chart as standalone SVG: ``series`` are (name, colour, one value per second).

    Fault windows are shaded; ``None`` values leave gaps; ``hline`` draws a
    dashed reference line (value, label).
    """
    values = [v for _, _, ys in series for v in ys if v is not None]
    low = y_min if y_min is not None else min(values, default=0.0)
    high = y_max if y_max is not None else _nice_max(max(values, default=1.0))
    if high <= low:
        high = low + 1.0
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    span = max(duration, 1.0)

    def x(t: float) -> float:
        return LEFT + plot_w * min(max(t / span, 0.0), 1.0)

    def y(v: float) -> float:
        return TOP + plot_h * (1.0 - (min(max(v, low), high) - low) / (high - low))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{LEFT}" y="15" font-size="13" font-weight="bold">{html.escape(title)}'
           f'</text>']
    for start, end, label in faults:
        out.append(f'<rect x="{x(start):.1f}" y="{TOP}" width="{max(x(end) - x(start), 1):.1f}" '
                   f'height="{plot_h}" fill="{FAULT_FILL}" fill-opacity="0.18">'
                   f'<title>{html.escape(label)}</title></rect>')
        out.append(f'<text x="{x(start) + 2:.1f}" y="{TOP + plot_h - 4}" font-size="9" '
                   f'fill="#a0522d">{html.escape(label.split(" ")[0])}</text>')
    # the frame first, so that a line along the top (100 %) stays visible over it
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
               f'stroke="#999"/>')
    for i in range(ticks + 1):
        v = low + (high - low) * i / ticks
        yy = y(v)
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" '
                   f'stroke="#e5e5e5"/>')
        out.append(f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">'
                   f'{html.escape(y_format.format(v))}</text>')
    tick = 5 if span <= 60 else 10 if span <= 180 else 60
    t = 0
    while t <= span:
        out.append(f'<text x="{x(t):.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle">'
                   f'{t}s</text>')
        t += tick
    if y_label:
        out.append(f'<text x="12" y="{TOP + plot_h / 2:.1f}" transform="rotate(-90 12 '
                   f'{TOP + plot_h / 2:.1f})" text-anchor="middle">{html.escape(y_label)}</text>')
    if hline is not None:
        yy = y(hline[0])
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" '
                   f'stroke="#555" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{WIDTH - RIGHT - 2}" y="{yy - 3:.1f}" text-anchor="end" '
                   f'fill="#555">{html.escape(hline[1])}</text>')
    legend_x = LEFT + 8
    for name, color, ys in series:
        segments: list[list[str]] = [[]]
        for second, value in enumerate(ys):
            if value is None:
                if segments[-1]:
                    segments.append([])
                continue
            if steps:
                segments[-1].append(f"{x(second):.1f},{y(value):.1f}")
                segments[-1].append(f"{x(second + 1):.1f},{y(value):.1f}")
            else:
                segments[-1].append(f"{x(second + 0.5):.1f},{y(value):.1f}")
        for points in segments:
            if len(points) == 1:
                cx, cy = points[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color}"/>')
            elif points:
                out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" '
                           f'points="{" ".join(points)}"/>')
        out.append(f'<rect x="{legend_x}" y="{TOP + 4}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{legend_x + 14}" y="{TOP + 13}">{html.escape(name)}</text>')
        legend_x += 24 + 7 * len(name)
    out.append("</svg>")
    return "\n".join(out)


def _faults(result: LabResult) -> list[tuple[float, float, str]]:
    return [(f.at, f.end, f.label()) for f in result.scenario.faults]


def _plots(result: LabResult) -> list[tuple[str, str]]:
    """(id, svg) of every plot of the report."""
    duration = result.scenario.duration
    faults = _faults(result)
    summaries = result.summaries
    plots: list[tuple[str, str]] = []

    def per_variant(key: str) -> list[tuple[str, str, Sequence[float | None]]]:
        return [(v, COLORS.get(v, "#333"), s.series[key]) for v, s in summaries.items()]

    plots.append(("availability", plot_svg(
        "Availability per second (full + degraded answers)", duration,
        per_variant("availability"), faults, y_min=0.0, y_max=1.0,
        y_format="{:.0%}", steps=True, hline=(OBJECTIVE, "99.99 %"))))
    full = [(f"{v} (full only)", COLORS.get(v, "#333") + "99", s.series["availability_full"])
            for v, s in summaries.items()]
    plots.append(("availability-full", plot_svg(
        "Availability per second, full answers only (the rest is degraded or failed)",
        duration, full, faults, y_min=0.0, y_max=1.0, y_format="{:.0%}", steps=True)))
    for variant, summary in summaries.items():
        color = COLORS.get(variant, "#333")
        series = [("p50", color + "66", summary.series["p50"]),
                  ("p95", color + "aa", summary.series["p95"]),
                  ("p99", color, summary.series["p99"])]
        plots.append((f"latency-{variant}", plot_svg(
            f"Latency percentiles per second, {variant} (from the intended send time)",
            duration, series, faults, y_min=0.0, y_label="seconds", y_format="{:.2f}",
            y_max=max(1.0, _nice_max(max((v for _, _, ys in series for v in ys
                                          if v is not None), default=1.0))),
            hline=(1.0, "p99 target 1 s"))))
    protected = summaries.get("protected")
    if protected is not None:
        breakers = protected.series.get("breakers", [])
        palette = ["#2e86ab", "#8f2d56", "#218380", "#73d2de", "#ffbc42", "#6a4c93"]
        lines = [(b["name"], palette[i % len(palette)], b["states"])
                 for i, b in enumerate(breakers)]
        plots.append(("breakers", plot_svg(
            "Breaker states, protected (0 closed, 1 half-open, 2 open)", duration,
            lines, faults, y_min=0.0, y_max=2.0, y_format="{:.0f}", steps=True, ticks=2)))
        plots.append(("retries-sheds", plot_svg(
            "Retries, sheds and fallbacks per second, protected", duration,
            [("retries", "#2e86ab", protected.series["retries"]),
             ("sheds", "#d1495b", protected.series["sheds"]),
             ("fallback answers", "#218380", protected.series["fallbacks"])],
            faults, y_min=0.0, y_format="{:.0f}", steps=True)))
    plots.append(("budget", plot_svg(
        "Error budget consumed (99.99 % objective over the run; 100 % = all of it)",
        duration, [(v, COLORS.get(v, "#333"), [b * 100 for b in s.series["budget_consumed"]])
                   for v, s in summaries.items()], faults, y_min=0.0, y_format="{:.0f} %",
        hline=(100.0, "budget"))))
    return plots


def render_summary_svg(result: LabResult,
                       plots: Sequence[str] = ("availability", "latency-protected",
                                               "breakers")) -> str:
    """Several plots of the report stacked in one standalone SVG (the README's picture)."""
    chosen = [svg for pid, svg in _plots(result) if pid in plots]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
             f'height="{HEIGHT * len(chosen)}" viewBox="0 0 {WIDTH} {HEIGHT * len(chosen)}">']
    for i, svg in enumerate(chosen):
        parts.append(svg.replace("<svg ", f'<svg y="{i * HEIGHT}" ', 1))
    parts.append("</svg>")
    return "\n".join(parts)


def render_html(result: LabResult) -> str:
    """The whole report as one self-contained HTML page."""
    esc = html.escape
    summaries = result.summaries
    head_cells = "".join(f"<th>{esc(v)}</th>" for v in summaries)
    rows: list[tuple[str, Callable[[VariantSummary], str]]] = [
        ("requests", lambda s: str(s.requests)),
        ("availability (full) [95 % CI]",
         lambda s: _with_interval(s.availability_full, s.availability_full_interval)),
        ("availability (full + degraded) [95 % CI]",
         lambda s: _with_interval(s.availability, s.availability_interval)),
        ("one-sided 95 % lower bound", _lower_bound),
        ("served degraded", lambda s: str(s.degraded)),
        ("degraded answers by fallback", _sources),
        ("failed", lambda s: str(s.failed)),
        ("p50 / p95 / p99 latency", lambda s: f"{_ms(s.p50)} / {_ms(s.p95)} / {_ms(s.p99)}"),
        ("p99 of the worst second", lambda s: _ms(s.worst_second_p99)),
        ("p99 by fault window", lambda s: ", ".join(
            f"{k}: {_ms(v)}" for k, v in s.p99_by_phase.items())),
        ("breaker openings", lambda s: str(s.breaker_openings)),
        ("retries", lambda s: str(s.retries)),
        ("sheds", lambda s: str(s.sheds)),
        ("fallback answers", lambda s: str(s.fallbacks)),
        ("error budget consumed (99.99 %)", lambda s: f"{s.budget_consumed * 100:.0f} %"),
        (_SEND_LAG_ROW, lambda s: s.send_lag_text),
        ("verdict", lambda s: s.verdict),
    ]
    body_rows = "\n".join(
        f"<tr><th>{esc(label)}</th>" + "".join(
            f'<td class="{_cls(label, s)}">{esc(fn(s))}</td>' for s in summaries.values())
        + "</tr>" for label, fn in rows)
    targets = "\n".join(
        f'<li class="{"ok" if t["met"] else "bad"}">{esc(name)}: '
        f'{"met" if t["met"] else "NOT met"} ({esc(_target_value(name, t))})</li>'
        for name, t in result.targets().items())
    phase_table = ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in PHASE_HEADER)
                   + "</tr>" + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row)
                                       + "</tr>" for row in phase_rows(result)) + "</table>")
    failures = []
    for summary in summaries.values():
        if not summary.failures_by_phase:
            failures.append(f"<p><b>{esc(summary.variant)}</b>: no failed request.</p>")
            continue
        items = "".join(
            f"<tr><td>{esc(phase)}</td><td>{esc(kind)}</td><td>{count}</td></tr>"
            for phase, kinds in summary.failures_by_phase.items()
            for kind, count in sorted(kinds.items(), key=lambda kv: -kv[1]))
        failures.append(f"<p><b>{esc(summary.variant)}</b>: {summary.failed} failed requests "
                        f"by fault window and cause</p><table><tr><th>window</th><th>cause</th>"
                        f"<th>requests</th></tr>{items}</table>")
    fault_rows = "".join(
        f"<tr><td>{f.at:.1f} s</td><td>{f.end:.1f} s</td><td>{esc(f.label())}</td></tr>"
        for f in result.scenario.faults)
    fault_errors = "".join(
        f"<li class='bad'>{esc(e['variant'])} {esc(e['fault'])} {esc(e['action'])}: "
        f"{esc(e['error'])}</li>" for e in result.fault_log if "error" in e)
    plots = "\n".join(f'<figure id="{pid}">{svg}</figure>' for pid, svg in _plots(result))
    s = result.scenario
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>fournines lab: {esc(s.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em auto; max-width: 900px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th:first-child {{ text-align: left; }}
td.ok, li.ok {{ color: #1b7f3b; }} td.bad, li.bad {{ color: #b00020; font-weight: bold; }}
td.warn {{ color: #9a6700; font-weight: bold; }}
p.behind {{ color: #b00020; font-weight: bold; }}
figure {{ margin: 1em 0; }}
.note {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>fournines lab: {esc(s.name)}</h1>
<p>The same open-loop load ({result.rate:.0f} requests/s, seed {result.seed}, {s.duration:g} s
each) and the same fault schedule against a real fleet (gateway, order, payment, profile:
uvicorn processes on loopback), first <b>unprotected</b> (plain httpx, fixed timeouts), then
<b>protected</b> by fournines. A request counts as served when the gateway answered 2xx,
in full or degraded (stale or unknown payment status, guest profile); latency is measured from the
intended send time, so a stalled fleet cannot hide its queue.</p>
<p>Capacity: the payment service was measured at <b>{result.capacity:.0f} requests/s</b>
(model: {s.payment.concurrency} workers x {s.payment.service_time * 1000:.0f} ms =
{result.capacity_model:.0f}/s); overloads: {esc(_burst(result))}.</p>
{_registry_html(result)}{_cpu_html(result)}
{_behind_html(result)}<h2>Results</h2>
<table><tr><th></th>{head_cells}</tr>
{body_rows}
</table>
<p class="note">{esc(STATISTICS_NOTE)} Zero failures in n requests prove an availability of
0.05<sup>1/n</sup> at most: 29,956 requests without a failure are the fewest that prove
99.99 %.</p>
{f'<p id="comparison"><b>{esc(comparison_line(result.comparison))}</b></p>'
 if result.comparison is not None else ""}
<h2>Targets</h2><ul>{targets}</ul>
<h2 id="root-cause">Root cause</h2>
<pre>{esc(chr(10).join(root_cause_lines(result))) or "no ranking (no fault)"}</pre>
{_steps_html(result)}<h2 id="phases">Answers per phase</h2>
<p class="note">Full service is back at the end of the last half second after a fault in
which fewer than 99 % of the protected pages were answered in full within 1 s.</p>
{phase_table}
<h2>Fault schedule</h2>
<table><tr><th>from</th><th>to</th><th>fault</th></tr>{fault_rows}</table>
{f"<ul>{fault_errors}</ul>" if fault_errors else ""}
<h2>Plots</h2>
<p class="note">Shaded: fault windows (hover for the fault). One point per second of
intended send time.</p>
{plots}
<h2>Where failures came from</h2>
{"".join(failures)}
<p class="note">Process logs: {esc(result.workdir)}</p>
</body></html>
"""


_SEND_LAG_ROW = "load generator's send lag"


def _cpu_html(result: LabResult) -> str:
    if not result.cpu_cores:
        return ""
    items = "".join(f"<li>{html.escape(v)}: {html.escape(_cores(c))}</li>"
                    for v, c in result.cpu_cores.items())
    return (f"<p>CPU during the load (of the machine's {os.cpu_count()} cores):</p>"
            f"<ul>{items}</ul>\n")


def _cores(cores: dict[str, float]) -> str:
    parts = ", ".join(f"{name} {value:.2f}" for name, value in cores.items())
    return f"{sum(cores.values()):.2f} cores ({parts})"


def _behind_html(result: LabResult) -> str:
    behind = [v for v, s in result.summaries.items() if s.generator_behind]
    if not behind:
        return ""
    names = html.escape(", ".join(behind))
    return (f'<p class="behind">The load generator fell behind its schedule ({names}: '
            f"more than {BEHIND_SHARE:.0%} of the requests left over "
            f"{BEHIND_LAG * 1000:.0f} ms late): the latencies include its own delay, "
            "the machine was busy.</p>\n")


def _cls(label: str, summary: VariantSummary) -> str:
    if label == _SEND_LAG_ROW:
        return "bad" if summary.generator_behind else ""
    if label in ("verdict", "one-sided 95 % lower bound") or label.startswith(
            "availability (full +"):
        return {"held": "ok", "not proven": "warn"}.get(summary.objective.outcome, "bad")
    return ""


def write_json(result: LabResult, path: Path) -> None:
    """Write ``result.to_json()`` to ``path`` (NaN as null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(result.to_json()), indent=1), encoding="utf-8")
