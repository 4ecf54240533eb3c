#!/usr/bin/env bash
# Installs deeprecall-client into a virtualenv, type-checks it against its generated stubs, and
# runs the tests against the server at the given endpoint (DEEPRECALL_API_KEY: the key to send,
# if the server requires one). --build-only stops after the type check.
# With an https:// endpoint and DEEPRECALL_TLS_CA (the PEM file of the CA that signed the
# server's certificate) it runs the TLS tests, tests/test_tls.py, instead; for a server that
# requires client certificates, DEEPRECALL_TLS_CLIENT_CERT and DEEPRECALL_TLS_CLIENT_KEY name
# one and its key.
# Usage: clients/python/run-tests.sh http://127.0.0.1:PORT | https://localhost:PORT | --build-only
set -euo pipefail

endpoint=${1:?usage: run-tests.sh ENDPOINT | --build-only}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
tools_dir=${DEEPRECALL_CLIENT_TOOLS:-$repo/target/client-tools}
venv=$tools_dir/python-test-venv

"$repo/clients/tools.sh" python
# One run at a time: runs share the virtualenv the package is reinstalled into.
exec {run_lock}> "$tools_dir/.lock-run-python"
flock "$run_lock"

# A real (non-editable) install from a copy, as a user's `pip install` would do it, without
# leaving build/ and *.egg-info in the source tree.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$here/pyproject.toml" "$here/README.md" "$here/src" "$work/"
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation \
    --force-reinstall "$work" > "$work/pip.log" 2>&1 || {
    cat "$work/pip.log"
    exit 1
}

cd "$here"
echo "== mypy (the convenience layer and the tests, against the generated stubs)"
"$venv/bin/mypy" --cache-dir "$tools_dir/mypy-cache" \
    -p deeprecall_client --python-executable "$venv/bin/python" > "$work/mypy.log" 2>&1 || {
    cat "$work/mypy.log"
    exit 1
}
"$venv/bin/mypy" --cache-dir "$tools_dir/mypy-cache" tests > "$work/mypy-tests.log" 2>&1 || {
    cat "$work/mypy-tests.log"
    exit 1
}

[ "$endpoint" = --build-only ] && exit 0

tests=(tests)
if [[ $endpoint == https://* && -n ${DEEPRECALL_TLS_CA:-} ]]; then
    # The other tests trust the system's roots, which do not know a private CA.
    tests=(tests/test_tls.py)
fi
echo "== pytest ${tests[*]} against $endpoint"
DEEPRECALL_ENDPOINT=$endpoint "$venv/bin/python" -m pytest -p no:cacheprovider -q "${tests[@]}"
