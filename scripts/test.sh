#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need, checks lint,
# format and types (ruff, mypy), then pytest.
#   bash scripts/test.sh            # everything CI runs
#   bash scripts/test.sh -k redis   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

# The Redis tests start a real redis-server on 127.0.0.1; install it if it is missing.
if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing redis-server (Debian package)..." >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq redis-server >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
    else
        echo "redis-server is missing: install it (apt install redis-server, brew install redis)," >&2
        echo "or point REDIS_SERVER_BIN at a redis-server binary, then run this again." >&2
        exit 2
    fi
fi

# The PostgreSQL tests start a real server (initdb, pg_ctl) on 127.0.0.1; install it if missing.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1 \
        && [ -z "${PG_BIN:-}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing postgresql (Debian package)..." >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq postgresql >/dev/null 2>&1 \
            || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }
    else
        echo "PostgreSQL's initdb is missing: install it (apt install postgresql, brew install postgresql)," >&2
        echo "or point PG_BIN at the folder holding initdb and pg_ctl, then run this again." >&2
        exit 2
    fi
fi

python -m pip install --quiet --disable-pip-version-check -e ".[test]"

# The quick checks first, so a lint, format or type error fails in seconds rather than
# after the whole suite (ruff and mypy come from the `test` extra; settings in pyproject).
echo "ruff check ..." >&2
python -m ruff check .
echo "ruff format --check ..." >&2
python -m ruff format --check .
echo "mypy (strict) ..." >&2
python -m mypy

exec python -m pytest -m "not slow" "$@"
