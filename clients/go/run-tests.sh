#!/usr/bin/env bash
# Builds the Go stubs and the example with Debian's Go toolchain and libraries (GOPATH mode:
# Debian packages no module cache), then runs the example against the server at the given
# endpoint and checks what it printed (DEEPRECALL_API_KEY: the key to send, if the server
# requires one). --build-only stops after the build.
# An https:// endpoint is reached over TLS, trusting the CA in DEEPRECALL_TLS_CA (a PEM file)
# when set, and presenting the client certificate in DEEPRECALL_TLS_CLIENT_CERT and
# DEEPRECALL_TLS_CLIENT_KEY when set; the script then also checks that the example fails
# without the CA, and without the client certificate.
# Usage: clients/go/run-tests.sh http://127.0.0.1:PORT | https://localhost:PORT | --build-only
set -euo pipefail

endpoint=${1:?usage: run-tests.sh ENDPOINT | --build-only}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
tools_dir=${DEEPRECALL_CLIENT_TOOLS:-$repo/target/client-tools}
module=github.com/deeprecall/deeprecall/clients/go

"$repo/clients/tools.sh" go
# One run at a time: runs build the same binary.
exec {run_lock}> "$tools_dir/.lock-run-go"
flock "$run_lock"

# GOPATH mode finds packages by import path under $GOPATH/src: link the module there, next to
# Debian's /usr/share/gocode (grpc, protobuf and their dependencies).
gopath=$tools_dir/gopath
mkdir -p "$gopath/src/$(dirname "$module")" "$gopath/bin"
ln -sfn "$here" "$gopath/src/$module"
export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOCACHE="$tools_dir/go-build" GOFLAGS=
echo "== $(go version)"

cd "$gopath/src/$module"
unformatted=$(gofmt -l deeprecallv1 example)
[ -z "$unformatted" ] || {
    echo "gofmt would change: $unformatted" >&2
    exit 1
}
# `go vet ./...` would skip the module: wildcards do not follow symlinks.
go vet "$module/deeprecallv1" "$module/example"
go build -o "$gopath/bin/deeprecall-example" "$module/example"

[ "$endpoint" = --build-only ] && exit 0

echo "== example against $endpoint"
output=$("$gopath/bin/deeprecall-example" -endpoint "$endpoint" -collection go-live 2>&1) || {
    echo "$output"
    echo "the example failed" >&2
    exit 1
}
echo "$output"
for expected in \
    "added aurora-strip, kestrel; 2 document(s) in go-live" \
    "step 1" \
    "  search " \
    "answer (confidence " \
    "Tampere" \
    "citations: aurora-strip, kestrel" \
    "failed: InvalidArgument: queries[1].query" \
    "an empty query: InvalidArgument: query"; do
    grep -qF -- "$expected" <<< "$output" || {
        echo "the example's output lacks: $expected" >&2
        exit 1
    }
done
grep -qE '^batch #0: .*Tampere' <<< "$output" || {
    echo "the example's output lacks the batch's answer" >&2
    exit 1
}

# Runs the example with the environment changes given first; it must fail, printing the last
# argument.
fails_with() {
    local expected=${*: -1}
    local refused
    if refused=$(env "${@:1:$#-1}" "$gopath/bin/deeprecall-example" -endpoint "$endpoint" 2>&1); then
        echo "the example ran with ${*:1:$#-1}" >&2
        exit 1
    fi
    grep -qF -- "$expected" <<< "$refused" || {
        echo "$refused"
        echo "with ${*:1:$#-1}, the example did not fail with: $expected" >&2
        exit 1
    }
}

if [[ $endpoint == https://* && -n ${DEEPRECALL_TLS_CA:-} ]]; then
    # Without the CA the server's certificate is checked against the system's roots.
    fails_with DEEPRECALL_TLS_CA= "x509: certificate signed by unknown authority"
fi
if [[ $endpoint == https://* && -n ${DEEPRECALL_TLS_CLIENT_CERT:-} ]]; then
    # The server requires the certificate: without one it closes the connection in the
    # handshake, so the call fails as unavailable, before any key check could refuse it.
    fails_with DEEPRECALL_TLS_CLIENT_CERT= DEEPRECALL_TLS_CLIENT_KEY= "code = Unavailable"
elif [ -n "${DEEPRECALL_API_KEY:-}" ]; then
    # The server requires a key: without one the example must stop at its first call.
    fails_with DEEPRECALL_API_KEY= "code = Unauthenticated"
fi
echo "go example: ok"
