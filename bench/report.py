"""docs/performance.md: the run's figures as Markdown tables, targets first."""

from __future__ import annotations

from pathlib import Path

from .harness import Comparison, Figure, Section
from .targets import Target

__all__ = ["format_seconds", "render"]

TO = "\u2013"  # an en dash between the two ends of a range

METHOD = """\
Each table is one comparison, run in the same process and the same minute as its
baseline. The variants take turns in rounds (A B C, then C B A, and so on), so that
background load, writeback bursts and cache warm-up fall on all of them alike; each
round gives every variant one batch of operations (after an untimed warmup). A batch's
figure is the **median** of its operations' times, so a lone slow fsync does not move it;
the table gives the median over rounds and the range (min - max). The **ratio** is
taken inside each round against the baseline's batch of the same round: *speed* is
baseline time / our time (above 1 is faster than the baseline), *cost* is our time /
baseline time (used where less is better, e.g. the append-scaling tables). Values: 2 KB
documents (pretty-printed as the file backend writes them), 500-byte messages (compact
JSON); default, durable settings unless a table says otherwise. Scratch files live in a
temporary folder on the project's filesystem, never in /dev/shm; Redis is a
redis-server the bench starts on 127.0.0.1 and a free port."""


def format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def _value(comparison: Comparison, seconds: float) -> str:
    if comparison.unit == "bytes":  # the figure is a byte count (bench/suites/memory.py)
        return f"{seconds / 1e6:,.1f} MB"
    if comparison.unit == "rate":
        return f"{1 / seconds:,.0f} {comparison.rate_label}" if seconds else "inf"
    return format_seconds(seconds)


def _range(comparison: Comparison, figure: Figure) -> str:
    low, high = min(figure.samples), max(figure.samples)
    if comparison.unit == "rate":
        low, high = high, low  # the slowest round is the lowest rate
    return f"{_value(comparison, low)} {TO} {_value(comparison, high)}"


def _ratio(figure: Figure, baseline: bool) -> str:
    if baseline:
        return "1 (baseline)"
    return f"**{figure.ratio:.2f}x** ({min(figure.ratios):.2f} {TO} {max(figure.ratios):.2f})"


def _table(comparison: Comparison) -> list[str]:
    kind = "speed" if comparison.ratio_kind == "speed" else "cost"
    figure_name = {"time": "per op", "rate": "rate", "bytes": "peak"}[comparison.unit]
    lines = [
        f"#### {comparison.title}",
        "",
        f"`{comparison.key}` · {comparison.repeats} rounds of {comparison.ops:,} op(s) per variant",
        "",
        f"| variant | {figure_name} (median) | min {TO} max | {kind} vs baseline (median, min {TO} max) |",
        "|---|---:|---:|---:|",
    ]
    for figure in comparison.figures:
        name = figure.name + (f" ({figure.note})" if figure.note else "")
        baseline = figure.name == comparison.baseline
        lines.append(
            f"| {name} | {_value(comparison, figure.median)} | {_range(comparison, figure)} | "
            f"{_ratio(figure, baseline)} |"
        )
    if comparison.note:
        lines += ["", comparison.note]
    return [*lines, ""]


def _targets(targets: list[Target], smoke: bool) -> list[str]:
    lines = ["## Targets", ""]
    if smoke:
        lines += ["*Smoke run: sizes are tiny, so these verdicts mean nothing.*", ""]
    lines += [
        "The floor: the same work done by the plainest code (no lock, no check, at most one",
        "thread hop), measured in the same run and read as the target reads its own",
        "figure. The library does that work and more, so a target past its floor cannot be met",
        "on this machine.",
        "",
        f"| target | measured (median, min {TO} max) | verdict | floor (same run) |",
        "|---|---:|---|---|",
    ]
    for t in targets:
        measured = "—" if t.value is None else f"{t.value:.2f}x ({t.low:.2f} {TO} {t.high:.2f})"
        lines.append(f"| {t.text} | {measured} | {t.status} | {_floor(t)} |")
    met = sum(t.met is True for t in targets)
    missed = sum(t.met is False for t in targets)
    return [*lines, "", f"{met} met, {missed} missed, {len(targets) - met - missed} not measured.", ""]


def _floor(target: Target) -> str:
    if target.floor is None:
        return ""
    if target.floor_value is None:
        return f"not measured: {target.floor.variant}"
    where = f" (`{target.floor.comparison}`)" if target.floor.comparison else ""
    return f"{target.floor_value:.2f}x: {target.floor.variant}{where}"


# (comparison key prefix, variant or None for every non-baseline variant) in the headline.
HEADLINE: list[tuple[str, str | None]] = [
    ("files.store", "FileStorage.store_conversation"),
    ("files.load", "FileStorage.load_conversation"),
    ("append.", None),
    ("sqlite.raw.store", None),
    ("sqlite.session.", None),
    ("redis.store", None),
    ("redis.append", None),
    ("scale.load.", None),
    ("scale.list.file", None),
    ("scale.stats.file", None),
    ("scale.cleanup.file", None),
    ("scale.migrate", None),
    ("scale.concurrency.file.store_conversation", None),
]


def _headline(comparisons: dict[str, Comparison]) -> list[str]:
    """The figures the targets and the README speak of: ours, the baseline's, the ratio."""
    lines = [
        "## Headline figures",
        "",
        "Every other figure is in the sections below.",
        "",
        "| operation | ours | baseline | ratio |",
        "|---|---:|---:|---:|",
    ]
    for prefix, wanted in HEADLINE:
        for comparison in (c for key, c in comparisons.items() if key.startswith(prefix)):
            base = comparison.figure(comparison.baseline)
            for figure in comparison.figures:
                if figure is base or (wanted is not None and figure.name != wanted):
                    continue
                if prefix == "append." and figure is not comparison.figures[-1]:
                    continue  # the longest history only
                kind = "speed" if comparison.ratio_kind == "speed" else "cost"
                lines.append(
                    f"| {comparison.title}: {figure.name} | {_value(comparison, figure.median)} | "
                    f"{base.name}: {_value(comparison, base.median)} | {figure.ratio:.2f}x {kind} |"
                )
    return [*lines, ""]


def render(
    *,
    smoke: bool,
    command: str,
    started: str,
    elapsed: float,
    machine: dict[str, str],
    versions: dict[str, str],
    sections: list[Section],
    targets: list[Target],
    findings: Path | None,
    skipped: dict[str, str],
) -> str:
    comparisons = {c.key: c for s in sections for c in s.comparisons}
    kind = "SMOKE run (tiny sizes, figures meaningless)" if smoke else "full run"
    lines = [
        "# Performance",
        "",
        f"Generated by `{command}` on {started} ({kind}, {elapsed / 60:.1f} min). Do not edit by",
        "hand: run the command again. `python -m bench --smoke` runs every benchmark at toy",
        "sizes in seconds (the test suite does, so the bench cannot rot).",
        "",
        "## Method",
        "",
        METHOD,
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine.items()),
        "",
        "## Versions",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in versions.items()),
        "",
    ]
    if skipped:
        lines += ["Peers skipped in this run:", ""]
        lines += [f"- {name}: {why}" for name, why in skipped.items()]
        lines.append("")
    lines += _targets(targets, smoke)
    lines += _headline(comparisons)
    for section in sections:
        lines += [f"## {section.title}", "", section.intro, ""]
        for comparison in section.comparisons:
            lines += _table(comparison)
        if section.notes:
            lines += ["Notes:", ""]
            lines += [f"- {note}" for note in section.notes]
            lines.append("")
    if findings is not None and findings.exists():
        lines += [findings.read_text().rstrip(), ""]
    return "\n".join(lines)
