"""Run every benchmark and write docs/performance.md.

    python -m bench                  # the full run (minutes); needs pip install -e '.[bench]'
    python -m bench --smoke          # every benchmark at toy sizes, in seconds; peers optional
    python -m bench --only files     # some sections (files, append, sqlite, redis, scale)

Scratch data goes to a temporary folder inside the project (so on the project's
filesystem, never /dev/shm), removed at the end; the bench starts its own redis-server
on 127.0.0.1 and a free port (tests/redis_server.py) and stops it at the end.
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

from tests.redis_server import RedisServer

from . import harness
from .context import FULL, SMOKE, Context
from .environment import machine, versions
from .harness import Comparison, Section
from .report import format_seconds, render
from .suites import append, files, redis, scale, sqlite
from .targets import evaluate

__all__ = ["SECTIONS", "main"]

PROJECT = Path(__file__).resolve().parent.parent
SECTIONS: dict[str, Callable[[Context], Awaitable[Section]]] = {
    "files": files.run,
    "append": append.run,
    "sqlite": sqlite.run,
    "redis": redis.run,
    "scale": scale.run,
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes: proves every benchmark runs, in seconds")
    parser.add_argument(
        "--output", type=Path, default=None,
        help="Markdown report (default: docs/performance.md; a smoke run prints it instead)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    parser.add_argument("--only", action="append", choices=sorted(SECTIONS), help="run only these sections")
    parser.add_argument("--scratch", type=Path, default=PROJECT,
                        help="folder in which to make the temporary scratch folder (default: the project)")  # fmt: skip
    return parser.parse_args(argv)


def _progress(comparison: Comparison) -> None:
    parts = []
    for figure in comparison.figures:
        ratio = "" if figure.name == comparison.baseline else f" ({figure.ratio:.2f}x)"
        parts.append(f"{figure.name} {format_seconds(figure.median)}{ratio}")
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
    sizes = SMOKE if args.smoke else FULL
    output = args.output if args.output is not None or args.smoke else PROJECT / "docs" / "performance.md"
    # (None for a smoke run without --output: the report goes to stdout.)
    names = args.only or list(SECTIONS)
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
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
    comparisons = {c.key: c for s in sections for c in s.comparisons}
    targets = evaluate(sizes, comparisons)
    elapsed = time.perf_counter() - began
    command = "python -m bench" + (" --smoke" if args.smoke else "") + "".join(f" --only {n}" for n in args.only or [])
    markdown = render(
        smoke=args.smoke, command=command, started=started_at, elapsed=elapsed,
        machine=about_machine, versions=versions(server_version), sections=sections,
        targets=targets, findings=None if args.smoke else PROJECT / "bench" / "FINDINGS.md",
        skipped=ctx.missing_peers,
    )  # fmt: skip
    if output is None:
        print(markdown)  # a smoke run must never overwrite the real report by default
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(markdown)
        print(f"wrote {output}", file=sys.stderr)
    if args.json is not None:
        document = {
            "smoke": args.smoke,
            "sections": [
                {"key": s.key, "title": s.title, "notes": s.notes, "comparisons": [c.as_dict() for c in s.comparisons]}
                for s in sections
            ],
            "targets": [{"text": t.text, "comparison": t.comparison, "value": t.value, "met": t.met} for t in targets],
            "skipped_peers": ctx.missing_peers,
        }
        args.json.write_text(json.dumps(document, indent=2))
    for target in targets:
        print(f"{target.status:>14}  {target.text}", file=sys.stderr)
    return 0


def _server_version(server: RedisServer) -> str:
    import redis

    client = redis.Redis(host="127.0.0.1", port=server.port)
    try:
        return str(client.info("server").get("redis_version", "unknown"))
    finally:
        client.close()
