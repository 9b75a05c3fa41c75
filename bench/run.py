"""Run every benchmark and write docs/performance.md.

    python -m bench                  # the full run (minutes); needs pip install -e '.[bench]'
    python -m bench --smoke          # every benchmark at toy sizes, in seconds; peers optional
    python -m bench --only files     # some sections (files, append, sqlite, redis, scale, kv_*, adapters_*,
                                     # transactions, postgres, cluster)
    python -m bench --json run.json  # also keep every figure; --render run.json rewrites the
                                     # report from it without running anything

Scratch data goes to a temporary folder inside the project (so on the project's
filesystem, never /dev/shm), removed at the end; the bench starts its own redis-server
on 127.0.0.1 and a free port (tests/redis_server.py) and stops it at the end, and a
PostgreSQL server the same way (tests/postgres_server.py) when a section needs one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.redis_server import RedisServer

from . import harness
from .context import FULL, SMOKE, Context
from .environment import machine, versions
from .harness import Comparison, Figure, Section
from .report import format_seconds, render
from .suites import (
    adapters_langgraph,
    adapters_openai,
    append,
    cluster,
    files,
    kv_file,
    kv_redis,
    kv_sqlite,
    memory,
    middleware,
    postgres,
    redis,
    scale,
    serializer,
    sqlite,
    transactions,
)
from .targets import evaluate

__all__ = ["SECTIONS", "main"]

PROJECT = Path(__file__).resolve().parent.parent
SECTIONS: dict[str, Callable[[Context], Awaitable[Section]]] = {
    "files": files.run,
    "append": append.run,
    "sqlite": sqlite.run,
    "redis": redis.run,
    "scale": scale.run,
    "kv_file": kv_file.run,
    "kv_sqlite": kv_sqlite.run,
    "kv_redis": kv_redis.run,
    "serializer": serializer.run,
    "adapters_openai": adapters_openai.run,
    "adapters_langgraph": adapters_langgraph.run,
    "middleware": middleware.run,
    "transactions": transactions.run,
    "postgres": postgres.run,
    "cluster": cluster.run,
    "memory": memory.run,
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes: proves every benchmark runs, in seconds")
    parser.add_argument(
        "--output", type=Path, default=None,
        help="Markdown report (default: docs/performance.md; a smoke run prints it instead)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    parser.add_argument(
        "--render", type=Path, default=None,
        help="run nothing: write the report again from a --json file (after editing bench/FINDINGS.md)",
    )  # fmt: skip
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS), help="run only these sections")
    parser.add_argument("--scratch", type=Path, default=PROJECT,
                        help="folder in which to make the temporary scratch folder (default: the project)")  # fmt: skip
    return parser.parse_args(argv)


def _progress(comparison: Comparison) -> None:
    parts = []
    for figure in comparison.figures:
        ratio = "" if figure.name == comparison.baseline else f" ({figure.ratio:.2f}x)"
        value = f"{figure.median / 1e6:.1f} MB" if comparison.unit == "bytes" else format_seconds(figure.median)
        parts.append(f"{figure.name} {value}{ratio}")
    print(f"  {comparison.key}: " + "; ".join(parts), file=sys.stderr, flush=True)


async def _run(ctx: Context, names: list[str]) -> list[Section]:
    sections = []
    try:
        for name in names:
            print(f"[{name}]", file=sys.stderr, flush=True)
            began = time.perf_counter()
            sections.append(await SECTIONS[name](ctx))
            print(f"[{name}] took {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    finally:
        for close in ctx.closers:
            await close()
    return sections


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.render is not None:
        run = json.loads(args.render.read_text())
    else:
        run = _measure(args)
        if args.json is not None:
            args.json.write_text(json.dumps(run, indent=2))
    smoke = bool(run["smoke"])
    sizes = SMOKE if smoke else FULL
    sections = [_section(s) for s in run["sections"]]
    targets = evaluate(sizes, {c.key: c for s in sections for c in s.comparisons})
    markdown = render(
        smoke=smoke, command=run["command"], started=run["started"], elapsed=run["elapsed"],
        machine=run["machine"], versions=run["versions"], sections=sections, targets=targets,
        findings=None if smoke else PROJECT / "bench" / "FINDINGS.md", skipped=run["skipped_peers"],
    )  # fmt: skip
    # A smoke run prints its report unless told where to write it: it must never
    # overwrite the real one by default.
    output = args.output if args.output is not None or smoke else PROJECT / "docs" / "performance.md"
    if output is None:
        print(markdown)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(markdown)
        print(f"wrote {output}", file=sys.stderr)
    for target in targets:
        print(f"{target.status:>14}  {target.text}", file=sys.stderr)
    return 0


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmarks; return everything the report needs, ready for JSON."""
    sizes = SMOKE if args.smoke else FULL
    names = args.only or list(SECTIONS)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    began = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix=".bench-tmp-", dir=args.scratch))
    server = RedisServer(scratch / "redis-server")
    harness.listeners.append(_progress)
    try:
        server.start()
        ctx = Context(sizes, args.smoke, scratch, server.url)
        ctx.load_peers()
        about_machine = machine(scratch, PROJECT)
        sections = asyncio.run(_run(ctx, names))
        server_version = _server_version(server)
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    command = "python -m bench" + (" --smoke" if args.smoke else "") + "".join(f" --only {n}" for n in args.only or [])
    comparisons = {c.key: c for s in sections for c in s.comparisons}
    return {
        "smoke": args.smoke,
        "command": command,
        "started": started,
        "elapsed": time.perf_counter() - began,
        "machine": about_machine,
        "versions": versions(server_version),
        "sections": [
            {"key": s.key, "title": s.title, "intro": s.intro, "notes": s.notes,
             "comparisons": [c.as_dict() for c in s.comparisons]}
            for s in sections
        ],
        "targets": [
            {"text": t.text, "comparison": t.comparison, "value": t.value, "met": t.met,
             "floor": None if t.floor is None else t.floor.variant, "floor_value": t.floor_value}
            for t in evaluate(sizes, comparisons)
        ],
        "skipped_peers": ctx.missing_peers,
    }  # fmt: skip


def _section(data: dict[str, Any]) -> Section:
    """A section back from its JSON form."""
    comparisons = []
    for c in data["comparisons"]:
        figures = [Figure(f["name"], f["samples"], f["ratios"], f["note"]) for f in c["figures"]]
        comparisons.append(
            Comparison(
                c["key"],
                c["title"],
                c["baseline"],
                figures,
                c["ops"],
                c["repeats"],
                ratio_kind=c["ratio_kind"],
                unit=c["unit"],
                rate_label=c.get("rate_label", "ops/s"),
                note=c["note"],
            )
        )
    return Section(data["key"], data["title"], data["intro"], comparisons, data["notes"])


def _server_version(server: RedisServer) -> str:
    import redis

    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        return str(client.info("server").get("redis_version", "unknown"))
    finally:
        client.close()
