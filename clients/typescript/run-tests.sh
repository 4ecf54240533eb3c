#!/usr/bin/env bash
# Builds @deeprecall/client with tsc, checks what `npm pack` would publish, and runs the tests
# and the example (over gRPC and gRPC-Web) against the server at the given endpoint, with Node 20+
# (DEEPRECALL_API_KEY: the key to send, if the server requires one). --build-only stops after
# the build.
# With an https:// endpoint and DEEPRECALL_TLS_CA (the PEM file of the CA that signed the
# server's certificate) it runs the TLS tests, test/tls.test.ts, and the example over TLS
# instead; for a server that requires client certificates, DEEPRECALL_TLS_CLIENT_CERT and
# DEEPRECALL_TLS_CLIENT_KEY name one and its key.
# Usage: clients/typescript/run-tests.sh http://127.0.0.1:PORT | https://localhost:PORT | --build-only
set -euo pipefail

endpoint=${1:?usage: run-tests.sh ENDPOINT | --build-only}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
tools_dir=${DEEPRECALL_CLIENT_TOOLS:-$repo/target/client-tools}

"$repo/clients/tools.sh" node
# One run at a time: runs rebuild the same dist/ and build-test/.
exec {run_lock}> "$tools_dir/.lock-run-typescript"
flock "$run_lock"
cd "$here"
echo "== node $(node --version), tsc $(node_modules/.bin/tsc --version)"

rm -rf dist build-test
node_modules/.bin/tsc -p tsconfig.json
# The tests and the example import "@deeprecall/client" by name, through the package's own
# "exports" map, so they type-check and run against dist/ exactly as a dependent would.
node_modules/.bin/tsc -p tsconfig.test.json

packed=$(npm pack --dry-run --json --ignore-scripts 2> /dev/null)
for file in dist/index.js dist/index.d.ts dist/node.js dist/node.d.ts \
    dist/gen/deeprecall/v1/deeprecall_pb.js dist/gen/deeprecall/v1/deeprecall_pb.d.ts; do
    grep -q "\"path\": \"$file\"" <<< "$packed" || {
        echo "npm pack would leave out $file" >&2
        exit 1
    }
done

[ "$endpoint" = --build-only ] && exit 0

export DEEPRECALL_ENDPOINT=$endpoint
if [[ $endpoint == https://* && -n ${DEEPRECALL_TLS_CA:-} ]]; then
    # The other tests trust Node.js's roots, which do not know a private CA.
    echo "== node --test test/tls.test.ts against $endpoint"
    node --test build-test/test/tls.test.js
    echo "== example over gRPC and TLS"
    node build-test/examples/query.js
    exit 0
fi
echo "== node --test against $endpoint"
node --test build-test/test/

echo "== example over gRPC, then gRPC-Web"
node build-test/examples/query.js
node build-test/examples/query.js --grpc-web
