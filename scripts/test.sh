#!/usr/bin/env bash
# Set up (a virtualenv in .venv with the dev extras) and run the checks and the tests:
# ruff, mypy on backend/, then pytest against a real Redis, real workers, SQLite and
# PostgreSQL (when one answers at 127.0.0.1:5432; SYNCQ_TEST_POSTGRES_URL points elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import backend, pytest, mypy" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed-dev ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  touch .venv/.installed-dev
fi
# The browser tests (tests/browser.py) drive Debian's Chromium through Playwright, whose
# own browser downloads are never used. Installed here when missing and we can; otherwise
# those tests skip and say why.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "== apt-get install chromium (for the browser tests)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q chromium chromium-driver >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; } \
    || echo "chromium could not be installed: the browser tests will skip"
fi
echo "== ruff"
.venv/bin/ruff check backend tests scripts benchmarks
.venv/bin/ruff format --check backend tests scripts benchmarks
echo "== mypy"
.venv/bin/mypy backend
echo "== pytest"
# Several test processes (PYTEST_WORKERS, default 3): most of the suite waits on timers,
# workers and Redis rather than the CPU, so three share two cores well. Arguments after
# the script's name go to pytest (-n 0 runs in one process).
exec .venv/bin/pytest -n "${PYTEST_WORKERS:-3}" --dist worksteal --durations=15 "$@"
