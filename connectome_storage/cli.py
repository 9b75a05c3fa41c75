"""The ``connectome-storage`` command: a thin shell over the library.

Each subcommand parses its arguments, calls one library method and prints the result.
Library errors become a one-line message and an exit code: 0 success, 1 problems found
(or the backend failed), 2 usage or configuration error. No tracebacks, and no password:
every message and report is shown with the passwords of the URLs in use replaced by ``***``.

Every command but ``migrate`` works on a storage that already exists: on a path that holds
none it exits 2 naming the path and creates nothing, so a mistyped ``--base-dir`` never
leaves an empty store behind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

from .backends.file import FileStorage
from .codec import format_time
from .config import (
    TYPE_VARIABLE,
    FileSettings,
    SqliteSettings,
    read_environment,
    redact_url,
    with_environment_middleware,
)
from .errors import (
    ConfigError,
    CorruptedDataError,
    InvalidArgumentError,
    InvalidKeyError,
    NotSupportedError,
    StorageError,
)
from .factory import StorageFactory
from .interface import DEFAULT_DEBOUNCE_MS, ChangeEvent, StorageInterface

__all__ = ["build_parser", "main"]

Handler = Callable[[StorageInterface, argparse.Namespace], Awaitable[int]]
# A command that opens its own storages (migrate) instead of the one the options select.
Standalone = Callable[[argparse.Namespace], Awaitable[int]]
EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE = 0, 1, 2


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")


def _print_table(rows: dict[str, Any]) -> None:
    width = max((len(key) for key in rows), default=0)
    for key, value in rows.items():
        print(f"{key.ljust(width)}  {value}")


# ------------------------------------------------------------------ secrets

# URLs this run connects to (settings, --redis-url, migrate SPECs): their passwords are
# scrubbed from everything printed, whatever a backend or a driver put in a message.
_urls_in_use: set[str] = set()


def _remember_urls(config: dict[str, Any]) -> None:
    for key in ("redis_url", "dsn"):
        if isinstance(config.get(key), str):
            _urls_in_use.add(config[key])


def _passwords(url: str) -> set[str]:
    found: set[str] = set()
    try:
        parts = urlsplit(url)
        found.update(value for value in (parts.password, unquote(parts.password or "")) if value)
        if (
            parts.username
            and parts.password is None
            and parts.scheme.removesuffix("+cluster") in ("redis", "rediss", "unix")
        ):
            found.update({parts.username, unquote(parts.username)})
        found.update(v for k, v in parse_qsl(parts.query) if k.lower() in {"password", "passwd", "pwd"} and v)
    except ValueError:
        pass
    return found


def scrub(text: str) -> str:
    """``text`` with every URL in use redacted and any of their passwords replaced by ``***``."""
    for url in sorted(_urls_in_use, key=len, reverse=True):
        text = text.replace(url, redact_url(url))
    for secret in sorted({p for url in _urls_in_use for p in _passwords(url)}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _scrub_value(value: Any) -> Any:
    """A report (health, stats) with every string scrubbed."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {key: _scrub_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub_value(item) for item in value]
    return value


# ------------------------------------------------------------------ commands


async def _stats(storage: StorageInterface, args: argparse.Namespace) -> int:
    stats = _scrub_value(await storage.get_storage_stats())
    _print_json(stats) if args.json else _print_table(stats)
    return EXIT_OK


async def _health(storage: StorageInterface, args: argparse.Namespace) -> int:
    return _print_health(await storage.health_check(), args)


def _unreachable(storage: StorageInterface, error: StorageError, started: float) -> dict[str, Any]:
    """The report ``health_check()`` would give for a backend that could not even be opened."""
    return {
        "status": "unhealthy",
        "backend": storage.backend_name,
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        "details": {"error": str(error), "error_type": type(error).__name__},
    }


def _print_health(report: dict[str, Any], args: argparse.Namespace) -> int:
    report = _scrub_value(report)
    if args.json:
        _print_json(report)
    else:
        print(f"{report['status']} ({report['backend']}, {report['latency_ms']} ms)")
        _print_table({f"  {k}": v for k, v in report["details"].items()})
    return EXIT_OK if report["status"] == "healthy" else EXIT_PROBLEMS


async def _conversation_rows(storage: StorageInterface) -> list[dict[str, Any]]:
    """Every unexpired conversation with its message count and last update (None when the
    conversation store never wrote it: then the count comes from reading its history, and
    is None when that does not read). A damaged file is reported on stderr, never fatal."""
    try:
        metadata = {meta.conversation_id: meta for meta in await storage.conversation_store().query().all()}
    except CorruptedDataError as e:
        print(f"connectome-storage: warning: {scrub(str(e))}; listing without metadata", file=sys.stderr)
        metadata = {}
    rows = []
    for conversation_id in await storage.list_conversations():
        meta = metadata.get(conversation_id)
        count = None if meta is None else meta.message_count
        if count is None:
            with suppress(CorruptedDataError):
                count = len(await storage.load_raw_messages(conversation_id))
        updated = (
            None if meta is None or meta.updated_at is None else meta.updated_at.isoformat(timespec="milliseconds")
        )
        rows.append({"conversation_id": conversation_id, "message_count": count, "updated_at": updated})
    return rows


def _conversation_lines(rows: list[dict[str, Any]]) -> list[str]:
    width = max((len(row["conversation_id"]) for row in rows), default=0)
    counts = [
        "? messages" if n is None else f"{n} message{'' if n == 1 else 's'}"
        for n in (row["message_count"] for row in rows)
    ]
    count_width = max(map(len, counts), default=0)
    return [
        f"{row['conversation_id'].ljust(width)}  {count.rjust(count_width)}"
        + (f"  updated {row['updated_at']}" if row["updated_at"] else "")
        for row, count in zip(rows, counts, strict=True)
    ]


async def _ls_messages(storage: StorageInterface, args: argparse.Namespace) -> int:
    """``ls --messages [--to AGENT]``: one line per message, oldest first (``--json``: the list)."""
    messages = await storage.message_store().query(to=args.to)
    if args.json:
        _print_json(messages)
        return EXIT_OK
    for message in messages:
        content = message.get("content", {k: v for k, v in message.items() if k not in _MESSAGE_HEADER})
        text = content if isinstance(content, str) else orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()
        preview = " ".join(text.split())
        preview = preview if len(preview) <= _PREVIEW else preview[: _PREVIEW - 3] + "..."
        print(f"{message['id']}  {message['timestamp']}  {message['from']} -> {message['to']}  {preview}")
    return EXIT_OK


# The fields every message has, shown in the line's head; the preview shows "content" or the rest.
_MESSAGE_HEADER = frozenset({"id", "timestamp", "from", "to"})
_PREVIEW = 60


async def _ls(storage: StorageInterface, args: argparse.Namespace) -> int:
    if args.messages or args.to is not None:
        return await _ls_messages(storage, args)
    sections: dict[str, list[Any]] = {}
    everything = args.all
    if args.kv:  # one namespace's keys
        sections[f"kv {args.kv}"] = await storage.kv(args.kv).keys()
    elif everything or not (args.agents or args.cache or args.states or args.kv is not None):
        sections["conversations"] = await _conversation_rows(storage)
    if everything or args.agents:
        sections["agents"] = await storage.list_agents()
    if everything or args.cache:
        sections["cache"] = await storage.list_cache_keys()
    if everything or args.states:
        sections["system"] = await storage.list_system_states()
    if everything or args.kv == "":
        sections["kv"] = await storage.list_namespaces()
    if args.json:
        _print_json(sections)
        return EXIT_OK
    lines = {
        title: _conversation_lines(items) if title == "conversations" else items for title, items in sections.items()
    }
    if len(lines) == 1:
        for line in next(iter(lines.values())):
            print(line)
    else:
        for title, items in lines.items():
            print(f"{title} ({len(items)}):")
            for line in items:
                print(f"  {line}")
    return EXIT_OK


async def _show(storage: StorageInterface, args: argparse.Namespace) -> int:
    if args.kv is not None:
        return await _show_kv_entry(storage, *args.kv)
    conversation_id = args.conversation_id
    if conversation_id is None:
        print("connectome-storage: show needs a CONVERSATION_ID (or --kv NAMESPACE KEY)", file=sys.stderr)
        return EXIT_USAGE
    if args.metadata:
        return await _show_metadata(storage, conversation_id)
    parts = {
        "raw_messages": args.raw or args.all,
        "memories": args.memories or args.all,
        "chunks": args.chunks or args.all,
    }
    document = await storage.load_conversation(conversation_id)
    shown: dict[str, Any] = {}
    if args.all or not any(parts.values()):
        shown["conversation"] = document
    if parts["raw_messages"]:
        shown["raw_messages"] = await storage.load_raw_messages(conversation_id)
    if parts["memories"]:
        shown["memories"] = await storage.load_memories(conversation_id)
    if parts["chunks"]:
        shown["chunks"] = await storage.load_chunks(conversation_id)
    if (
        all(value in (None, []) for value in shown.values())
        and conversation_id not in await storage.list_conversations()
    ):
        print(
            f"connectome-storage: no conversation {conversation_id!r}; `connectome-storage ls` lists them",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    _print_json(next(iter(shown.values())) if len(shown) == 1 else shown)
    return EXIT_OK


async def _show_metadata(storage: StorageInterface, conversation_id: str) -> int:
    conversation = await storage.conversation_store().load(conversation_id)
    if conversation is None:
        print(
            f"connectome-storage: no conversation {conversation_id!r} (or it has expired); "
            "`connectome-storage ls` lists them",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    meta = conversation.metadata

    def moment(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat(timespec="milliseconds")

    _print_json({
        "conversation_id": meta.conversation_id, "created_at": moment(meta.created_at),
        "updated_at": moment(meta.updated_at), "message_count": meta.message_count, "ttl": meta.ttl,
        "expires_at": moment(meta.expires_at), "metadata": meta.metadata,
    })  # fmt: skip
    return EXIT_OK


async def _show_kv_entry(storage: StorageInterface, namespace: str, key: str) -> int:
    entry = await storage.kv(namespace).get_entry(key)
    if entry is None:
        print(
            f"connectome-storage: no live entry {key!r} in namespace {namespace!r}; "
            f"`connectome-storage ls --kv {namespace}` lists its keys",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    _print_json({
        "key": entry.key, "value": entry.value, "tags": entry.tags,
        "created_at": entry.created_at.isoformat(timespec="milliseconds"),
        "updated_at": entry.updated_at.isoformat(timespec="milliseconds"),
        "expires_at": None if entry.expires_at is None else entry.expires_at.isoformat(timespec="milliseconds"),
    })  # fmt: skip
    return EXIT_OK


async def _verify(storage: StorageInterface, args: argparse.Namespace) -> int:
    problems = await storage.verify()
    if args.json:
        _print_json([{"location": p.location, "message": p.message} for p in problems])
    elif problems:
        for problem in problems:
            print(f"BAD  {problem.location}\n     {problem.message}")
        print(f"{len(problems)} problem(s) found")
    elif isinstance(storage.settings, FileSettings):
        print("ok: every entity parses and the tree holds no strays")
    else:
        print("ok: every entity parses")
    return EXIT_PROBLEMS if problems else EXIT_OK


async def _cleanup(storage: StorageInterface, args: argparse.Namespace) -> int:
    removed = await storage.cleanup()
    if args.json:
        _print_json(removed)
    else:
        print(f"removed {sum(removed.values())} item(s):")
        _print_table({f"  {what}": count for what, count in removed.items()})
    return EXIT_OK


def _file_storage(storage: StorageInterface, command: str) -> Any:
    if not hasattr(storage, "list_backups"):
        raise ConfigError(f"`{command}` works on the file backend only (this is {storage.backend_name})")
    return storage


# A backup file's own name carries its time with "-" for ":" (2026-11-30T07-09-04.057Z).
_FILE_NAME_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d)-(\d\d)-(\d\d(?:\.\d+)?Z)$")


def iso_time(text: str) -> str:
    """A backup's time as ISO 8601 UTC that ``datetime.fromisoformat`` parses."""
    try:
        datetime.fromisoformat(text)
        return text
    except ValueError:
        return _FILE_NAME_TIME.sub(r"\1:\2:\3", text)


async def _backups(storage: StorageInterface, args: argparse.Namespace) -> int:
    versions = await _file_storage(storage, "backups").list_backups(args.path)
    if args.json:
        _print_json(
            [
                {"number": v.number, "taken_at": iso_time(v.taken_at), "size": v.size, "path": str(v.path)}
                for v in versions
            ]
        )
    elif not versions:
        print(f"no kept versions of {args.path}")
    else:
        for version in versions:
            print(f"{version.number:>6}  {iso_time(version.taken_at)}  {version.size:>8} bytes  {version.path}")
    return EXIT_OK


async def _restore(storage: StorageInterface, args: argparse.Namespace) -> int:
    file_storage = _file_storage(storage, "restore")
    # Nothing kept is a finding about the data (exit 1), not a mistake in the command.
    if not await file_storage.list_backups(args.path):
        print(f"connectome-storage: no kept versions of {args.path}; nothing to restore", file=sys.stderr)
        return EXIT_PROBLEMS
    try:
        restored = await file_storage.restore_backup(args.path, args.version)
    except InvalidArgumentError as e:
        if args.version is not None:
            raise  # a version number that is not kept: a usage error
        print(f"connectome-storage: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_PROBLEMS
    print(
        f"restored {args.path} from version {restored.number} ({iso_time(restored.taken_at)}); "
        "the replaced version was kept"
    )
    return EXIT_OK


# -------------------------------------------------------------------- watch


def _shown_path(path: Path, root: Path | None) -> str:
    """``watch`` shows paths relative to the base dir (as ``backups`` and ``restore`` take
    them), in text and JSON alike."""
    if root is not None and path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    return str(path)


def _watch_line(event: ChangeEvent, root: Path | None, stamp: str) -> str:
    shown = _shown_path(event.path, root)
    line = f"{stamp}  {event.change:<8}  {event.kind_name:<16}  {event.id}  {shown}"
    if event.own:
        line += "  (own)"
    if not event.valid:
        line += f"  INVALID: {event.error}"
    return line


async def _watch(storage: StorageInterface, args: argparse.Namespace) -> int:
    base_dir = getattr(storage, "base_dir", None)  # None on backends that cannot watch
    root = None if base_dir is None else Path(base_dir).absolute()
    ready = asyncio.Event()

    async def announce() -> None:
        await ready.wait()
        print(f"watching {root} for changes (Ctrl-C to stop)", file=sys.stderr, flush=True)

    announcer = asyncio.create_task(announce())
    try:
        async for event in storage.watch(debounce_ms=args.debounce, ready=ready):
            stamp = format_time(round(time.time() * 1000))
            if args.json:
                record = {"time": stamp, **event.as_dict(), "path": _shown_path(event.path, root)}
                line = orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode()
            else:
                line = _watch_line(event, root, stamp)
            # Flushed line by line: the reader is usually a person or a pipe waiting for it.
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    finally:
        announcer.cancel()
    return EXIT_OK


# ------------------------------------------------------------------ migrate

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
_REPORT_LINES = [
    ("conversations", "conversations"),
    ("conversation_metadata", "with metadata"),
    ("raw_messages", "raw messages"),
    ("memories", "memories"),
    ("chunks", "chunk lists"),
    ("reasoning_chains", "reasoning chains"),
    ("cache_entries", "cache entries"),
    ("system_states", "system states"),
    ("skipped_expired", "expired, not copied"),
]


class _ProgressBar:
    """``progress(done, total)`` for migrate, on stderr.

    On a terminal, one bar redrawn in place with ``\\r`` (at most ~20 times a second); on
    a pipe or a log file, a line at 0, 25, 50, 75 and 100 %, so logs stay short.
    """

    WIDTH = 30

    def __init__(self, stream: TextIO, label: str) -> None:
        self._stream = stream
        self._label = label
        self._tty = stream.isatty()
        self._quarter = -1
        self._drawn_at = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        fraction = 1.0 if total <= 0 else min(1.0, done / total)
        if self._tty:
            now = time.monotonic()
            if done < total and now - self._drawn_at < 0.05:
                return
            self._drawn_at, self._drawn = now, True
            filled = round(fraction * self.WIDTH)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            self._stream.write(f"\r{self._label} [{bar}] {fraction:4.0%}  {done}/{total}")
        else:
            quarter = int(fraction * 4)
            if quarter <= self._quarter:
                return
            self._quarter = quarter
            self._stream.write(f"{self._label}: {fraction:.0%} ({done}/{total})\n")
        self._stream.flush()

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def _endpoint(spec: str, option: str, key_prefix: str | None, schema: str | None, must_exist: bool) -> StorageInterface:
    """The storage a migrate SPEC names: file:PATH, sqlite:PATH, a Redis URL or a PostgreSQL DSN."""
    config: dict[str, Any]
    if spec.startswith(_POSTGRES_SCHEMES):
        backend, config = "postgres", {"dsn": spec}
        if schema is not None:
            config["schema"] = schema
    elif spec.startswith(_REDIS_SCHEMES):
        backend, config = "redis", {"redis_url": spec}
        if key_prefix is not None:
            config["key_prefix"] = key_prefix
    else:
        scheme, _, location = spec.partition(":")
        if scheme not in ("file", "sqlite") or not location:
            raise ConfigError(
                f"{option} {redact_url(spec)!r} is not a storage: use file:PATH, sqlite:PATH, redis://HOST:PORT/DB "
                "or postgresql://USER@HOST:PORT/DATABASE"
            )
        backend = scheme
        config = {"base_dir" if scheme == "file" else "db_path": location}
        exists = Path(location).is_dir() if scheme == "file" else Path(location).is_file()
        if must_exist and not exists:
            raise ConfigError(f"{option} {spec!r}: {location} does not exist; nothing to migrate")
    # The CONNECTOME_STORAGE_* variables still apply (pretty JSON, timeouts, ...); the SPEC
    # decides the backend and where it is.
    _backend, settings = read_environment(os.environ)
    return _build_storage(backend, settings | config)


def _same_place(source: str, destination: str, source_within: Any, destination_within: Any) -> bool:
    """Whether two SPECs name one storage (``*_within``: the Redis key prefix or PostgreSQL schema)."""
    if source.startswith((*_REDIS_SCHEMES, *_POSTGRES_SCHEMES)):
        return (source, source_within) == (destination, destination_within)
    scheme, _, location = source.partition(":")
    other_scheme, _, other = destination.partition(":")
    return scheme == other_scheme and Path(location).resolve() == Path(other).resolve()


async def _migrate(args: argparse.Namespace) -> int:
    from .migrate import migrate  # only this command needs it

    source_prefix = args.from_key_prefix or args.migrate_key_prefix
    destination_prefix = args.to_key_prefix or args.migrate_key_prefix
    source_schema = args.from_schema or args.migrate_schema
    destination_schema = args.to_schema or args.migrate_schema
    if _same_place(
        args.source, args.destination, (source_prefix, source_schema), (destination_prefix, destination_schema)
    ):
        raise ConfigError(f"--from and --to name the same storage ({redact_url(args.source)}); nothing to do")
    source = _endpoint(args.source, "--from", source_prefix, source_schema, must_exist=True)
    destination = _endpoint(args.destination, "--to", destination_prefix, destination_schema, must_exist=False)
    bar = _ProgressBar(sys.stderr, "migrating")
    started = time.perf_counter()
    async with source, destination:
        try:
            report = await migrate(source, destination, progress=bar)
        finally:
            bar.close()
    elapsed = time.perf_counter() - started
    counts = {name: int(getattr(report, name)) for name, _label in _REPORT_LINES}
    if args.json:
        _print_json(counts)
        return EXIT_OK
    print(f"migrated {redact_url(args.source)} -> {redact_url(args.destination)} in {elapsed:.2f} s")
    width = max(len(label) for _name, label in _REPORT_LINES)
    for name, label in _REPORT_LINES:
        print(f"  {label.ljust(width)}  {counts[name]:>8}")
    return EXIT_OK


async def _rotate_key(storage: StorageInterface, args: argparse.Namespace) -> int:
    """Re-encrypt everything under CONNECTOME_STORAGE_ENCRYPTION_KEY, reading old keys from
    the variables --old-key-env names (keys never go on the command line)."""
    from .config import ENCRYPTION_KEY_VARIABLE, _parse_encryption_key
    from .middleware._rotate import rotate_key
    from .middleware.encryption import Encryption

    if not os.environ.get(ENCRYPTION_KEY_VARIABLE, "").strip():
        raise ConfigError(
            f"rotate-key needs the new key in {ENCRYPTION_KEY_VARIABLE} (base64 of 32 bytes); "
            "name the variables holding old keys with --old-key-env"
        )
    current = _parse_encryption_key(os.environ[ENCRYPTION_KEY_VARIABLE], ENCRYPTION_KEY_VARIABLE)
    old_keys = []
    for name in args.old_key_env or []:
        if name not in os.environ:
            raise ConfigError(f"--old-key-env {name}: the environment variable {name} is not set")
        old_keys.append(_parse_encryption_key(os.environ[name], name))
    encryption = Encryption(current, old_keys=old_keys)
    bar = _ProgressBar(sys.stderr, "rotating")
    try:
        report = await rotate_key(storage, encryption, progress=bar)
    finally:
        bar.close()
    counts = report.as_dict()
    if args.json:
        _print_json({"key_id": encryption.key_id, **counts})
        return EXIT_OK
    print(f"every value is now under key id {encryption.key_id}")
    _print_table({
        "  values re-encrypted": counts["values"],
        "  entities rewritten": counts["entities"],
        "  values already under the key": counts["current"],
        "  expired entries removed": counts["expired_removed"],
    })  # fmt: skip
    return EXIT_OK


# ------------------------------------------------------------------- parsing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connectome-storage",
        description="Inspect and maintain connectome-storage data. The storage is chosen like "
        "create_storage_from_env (CONNECTOME_STORAGE_* variables); the options below override it.",
    )
    parser.add_argument("--type", help="backend: file, sqlite, redis or a registered name")
    parser.add_argument("--base-dir", help="file backend folder (alone, it selects the file backend)")
    parser.add_argument("--db-path", help="SQLite database file (alone, it selects sqlite)")
    parser.add_argument("--redis-url", help="Redis URL (alone, it selects redis)")
    parser.add_argument("--key-prefix", help="Redis key prefix")
    parser.add_argument(
        "--dsn", help="PostgreSQL DSN, postgresql://USER:PASSWORD@HOST:PORT/DB (alone, it selects postgres)"
    )
    parser.add_argument("--schema", help="PostgreSQL schema that holds the storage's tables")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        handler: Handler | Standalone,
        help_text: str,
        json: bool = False,
        standalone: bool = False,
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler, standalone=standalone)
        if json:
            sub.add_argument("--json", action="store_true", help="machine-readable JSON output")
        return sub

    command("stats", _stats, "print counts of every kind of stored data", json=True)
    command("health", _health, "probe the backend; exit 1 when it is unhealthy", json=True)
    ls = command(
        "ls",
        _ls,
        "list conversations with message count and last update (options: agents, cache keys, system states, "
        "key-value collections)",
        json=True,
    )
    ls.add_argument("--agents", action="store_true", help="list agent ids")
    ls.add_argument("--cache", action="store_true", help="list unexpired cache keys")
    ls.add_argument("--states", action="store_true", help="list system state keys")
    ls.add_argument(
        "--kv", nargs="?", const="", metavar="NAMESPACE",
        help="list key-value namespaces, or with NAMESPACE the live keys of that one",
    )  # fmt: skip
    ls.add_argument("--all", action="store_true", help="list everything, by section")
    ls.add_argument(
        "--messages", action="store_true",
        help="list the message store's messages, oldest first: id, timestamp, from -> to, a content preview",
    )  # fmt: skip
    ls.add_argument("--to", metavar="AGENT", help="with --messages: only messages addressed to AGENT (broadcasts too)")
    show = command("show", _show, "print a conversation document as JSON (options for its other parts)")
    show.add_argument("conversation_id", metavar="CONVERSATION_ID", nargs="?")
    show.add_argument(
        "--kv", nargs=2, metavar=("NAMESPACE", "KEY"), help="print one key-value entry (value, tags and times)"
    )
    show.add_argument("--raw", action="store_true", help="show the raw message history")
    show.add_argument("--memories", action="store_true", help="show the memories")
    show.add_argument("--chunks", action="store_true", help="show the chunking decisions")
    show.add_argument("--all", action="store_true", help="show every part")
    show.add_argument(
        "--metadata", action="store_true", help="show the conversation store's metadata (times, count, TTL, dict)"
    )
    command(
        "verify",
        _verify,
        "check every entity parses and the tree holds no strays; exit 1 naming each bad file",
        json=True,
    )
    command(
        "cleanup",
        _cleanup,
        "all housekeeping: expired cache entries, conversations and key-value entries, and on the file tree "
        "stale temp files, appends a crash cut short, and old backups and locks of deleted entities; "
        "prints what it removed",
        json=True,
    )
    backups = command("backups", _backups, "list the kept versions of one file (file backend)", json=True)
    backups.add_argument("path", metavar="PATH", help="relative to the base dir, e.g. conversations/c1/current.json")
    restore = command(
        "restore", _restore, "put back the newest kept version of a file that reads correctly (file backend)"
    )
    restore.add_argument("path", metavar="PATH", help="relative to the base dir, e.g. conversations/c1/current.json")
    restore.add_argument("--version", type=int, help="restore this version number (see `backups PATH`)")
    watch = command("watch", _watch, "print each change made to the tree, by anyone, until Ctrl-C (file backend)")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    watch.add_argument(
        "--debounce", type=int, default=DEFAULT_DEBOUNCE_MS, metavar="MS",
        help=f"gather a burst of changes for at most MS ms (default {DEFAULT_DEBOUNCE_MS})",
    )  # fmt: skip
    migrate = command(
        "migrate", _migrate, "copy everything from one storage into another, with a progress bar",
        json=True, standalone=True,
    )  # fmt: skip
    migrate.add_argument("--from", dest="source", required=True, metavar="SPEC",
                         help="source: file:PATH, sqlite:PATH, redis://HOST:PORT/DB (redis+cluster://HOST:PORT) "
                              "or postgresql://USER:PASSWORD@HOST:PORT/DB")  # fmt: skip
    migrate.add_argument("--to", dest="destination", required=True, metavar="SPEC",
                         help="destination, same forms; created if missing")  # fmt: skip
    migrate.add_argument("--key-prefix", dest="migrate_key_prefix", metavar="PREFIX",
                         help="Redis key prefix for a redis:// source or destination")  # fmt: skip
    migrate.add_argument("--from-key-prefix", metavar="PREFIX", help="key prefix of a Redis source")
    migrate.add_argument("--to-key-prefix", metavar="PREFIX", help="key prefix of a Redis target")
    migrate.add_argument("--schema", dest="migrate_schema", metavar="SCHEMA",
                         help="PostgreSQL schema for a postgresql:// source or destination")  # fmt: skip
    migrate.add_argument("--from-schema", metavar="SCHEMA", help="schema of a PostgreSQL source")
    migrate.add_argument("--to-schema", metavar="SCHEMA", help="schema of a PostgreSQL target")
    rotate = command(
        "rotate-key",
        _rotate_key,
        "re-encrypt every stored value under the key in CONNECTOME_STORAGE_ENCRYPTION_KEY; "
        "resumable: run it again after an interruption",
        json=True,
    )
    rotate.add_argument(
        "--old-key-env", action="append", metavar="NAME",
        help="an environment variable holding an old key (base64) to read with; repeat for several",
    )  # fmt: skip
    return parser


def storage_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> StorageInterface:
    """The storage the global options and CONNECTOME_STORAGE_* variables select."""
    backend, config = read_environment(os.environ if environ is None else environ)
    overrides = {
        "base_dir": args.base_dir,
        "db_path": args.db_path,
        "redis_url": args.redis_url,
        "key_prefix": args.key_prefix,
        "dsn": args.dsn,
        "schema": args.schema,
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    implied = {"base_dir": "file", "db_path": "sqlite", "redis_url": "redis", "dsn": "postgres"}
    locations = [implied[key] for key in overrides if key in implied]
    source = TYPE_VARIABLE
    if args.type:
        backend, source = args.type, "--type"
    elif len(locations) == 1:
        backend = locations[0]
    config.update(overrides)
    return _build_storage(backend, config, source)


def _build_storage(backend: str, config: dict[str, Any], source: str | None = None) -> StorageInterface:
    """A ``backend`` storage from ``config``, leaving out keys that belong to other backends
    (CONNECTOME_STORAGE_* variables are read for every backend)."""
    _remember_urls(config)
    config = with_environment_middleware(config)  # CONNECTOME_STORAGE_ENCRYPTION_KEY: Encryption
    cls = StorageFactory.backend_class(backend, source)
    accepted = set(cls.settings_class.__dataclass_fields__)
    return cls({key: value for key, value in config.items() if key in accepted})


# Commands that only read: they never create or change anything.
READ_ONLY_COMMANDS = frozenset({"stats", "health", "ls", "show", "verify", "backups", "watch"})


def require_existing(storage: StorageInterface) -> None:
    """ConfigError unless ``storage``'s file tree or database file already exists.

    Checked before ``initialize()``, which would create an empty one. A server backend
    (Redis) has nothing to check here: ``health`` reports it unreachable instead.
    """
    settings = storage.settings
    if isinstance(settings, FileSettings):
        from .backends.file import MARKER  # the file backend is always installed

        base_dir = Path(settings.base_dir)
        if not (base_dir / MARKER).is_file():
            what = "does not exist" if not base_dir.exists() else f"holds no storage (no {MARKER})"
            raise ConfigError(
                f"{base_dir} {what}; check --base-dir or CONNECTOME_STORAGE_BASE_DIR (nothing was created)"
            )
    elif isinstance(settings, SqliteSettings):
        db_path = Path(settings.db_path)
        if not db_path.is_file():
            what = "is a folder, not a database file" if db_path.is_dir() else "does not exist"
            raise ConfigError(f"{db_path} {what}; check --db-path or CONNECTOME_STORAGE_DB_PATH (nothing was created)")


async def _run(args: argparse.Namespace) -> int:
    if args.standalone:
        return int(await args.handler(args))
    storage = storage_from_args(args)
    require_existing(storage)
    if args.command in READ_ONLY_COMMANDS and isinstance(storage, FileStorage):
        storage.create_on_open = False  # opening an older tree must not add folders to it
    started = time.perf_counter()
    try:
        await storage.initialize()
    except StorageError as e:
        if args.command != "health":
            raise
        # An unreachable server is exactly what `health` is for: report it, do not fail.
        return _print_health(_unreachable(storage, e, started), args)
    try:
        return int(await args.handler(storage, args))
    finally:
        await storage.shutdown()


def _one_line(text: str) -> str:
    return scrub(" ".join(text.split("\n")))


def _fail(prefix: str, error: BaseException, code: int) -> int:
    print(f"connectome-storage: {prefix}: {_one_line(str(error))}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``connectome-storage`` and ``python -m connectome_storage``."""
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except (ConfigError, InvalidKeyError, InvalidArgumentError, NotSupportedError) as e:
        return _fail("error", e, EXIT_USAGE)
    except StorageError as e:
        return _fail(type(e).__name__, e, EXIT_PROBLEMS)
    except ImportError as e:
        return _fail("error", e, EXIT_USAGE)
    except KeyboardInterrupt:
        # Ctrl-C is how `watch` is meant to end; anything else was interrupted.
        return EXIT_OK if args.command == "watch" else 130
    except BrokenPipeError:
        # The reader went away (`watch | head -3`): stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as e:
        # The library turns its own OS errors into StorageError; this is a last line so
        # that the command never shows a traceback (a closed stdout, a vanished folder).
        return _fail(type(e).__name__, e, EXIT_PROBLEMS)
