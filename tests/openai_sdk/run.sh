#!/usr/bin/env bash
# Installs the official `openai` Python SDK (requirements.txt, from PyPI) into a virtualenv under
# target/ (git-ignored; reinstalled only when requirements.txt changes) and runs
# test_openai_sdk.py against a DeepRecall HTTP API.
# Usage: tests/openai_sdk/run.sh http://127.0.0.1:PORT/v1
# Environment: DEEPRECALL_API_KEY (an admin key), DEEPRECALL_LIMITED_KEY (a key whose burst is
# 2 requests and whose rate refills no faster than one a minute).
set -euo pipefail

base_url=${1:?usage: run.sh BASE_URL}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
tools_dir=${DEEPRECALL_CLIENT_TOOLS:-$repo/target/client-tools}
venv=$tools_dir/openai-sdk-venv
stamp=$venv/requirements.txt

if ! cmp -s "$here/requirements.txt" "$stamp"; then
    echo "== installing the openai SDK into $venv"
    rm -rf "$venv"
    mkdir -p "$tools_dir"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$stamp"
fi

echo "== openai SDK against $base_url"
DEEPRECALL_HTTP_BASE_URL=$base_url "$venv/bin/python" "$here/test_openai_sdk.py"
