#!/usr/bin/env bash
# Runs the image that deploy/build-image.sh exported, the way a container runtime would, and
# checks it end to end:
#   - its configuration: ENTRYPOINT ["deeprecall", "serve"], a numeric non-root user, listening
#     on 0.0.0.0:50051, the OCI labels;
#   - its entrypoint, run with `buildah run --isolation chroot` as the image's user, reports
#     SERVING to `deeprecall health` run inside the image;
#   - it takes documents and answers a Query, asked with `deeprecall ingest` and `deeprecall
#     query` from outside;
#   - on SIGTERM it drains and exits 0 within its grace period.
#
#   deploy/test-image.sh [--archive FILE] [--client PATH]
#
#   --archive  the OCI archive; default: <target dir>/deeprecall-image.oci.tar
#   --client   the deeprecall binary that plays the client; default: the one in the image
#
# Chroot isolation shares the machine's network, so the server is told to listen on
# 127.0.0.1 and a free port instead of the image's 0.0.0.0:50051 (checked in its config).
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-target}
archive=$target_dir/deeprecall-image.oci.tar
client=""
while [ $# -gt 0 ]; do
    case "$1" in
        --archive) archive=$2; shift 2 ;;
        --client) client=$2; shift 2 ;;
        *) echo "test-image.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -f "$archive" ] || { echo "test-image.sh: no image archive at $archive" >&2; exit 1; }

storage=${DEEPRECALL_BUILDAH_STORAGE:-${TMPDIR:-/var/tmp}/deeprecall-buildah}
buildah() {
    command buildah --storage-driver vfs --root "$storage/root" --runroot "$storage/run" "$@"
}
export BUILDAH_ISOLATION=chroot

# Seconds the server gets to drain in this test, and the most its exit may take after SIGTERM:
# the grace period plus the 5 s the server gives running queries to end (src/server).
grace=5
work=$(mktemp -d)
container=""
server_pid=""
runner=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2> /dev/null; then
        kill -KILL "$server_pid" 2> /dev/null || true
    fi
    # buildah run ends its child when it is itself told to stop.
    if [ -n "$runner" ] && kill -0 "$runner" 2> /dev/null; then
        kill -TERM "$runner" 2> /dev/null || true
        wait "$runner" 2> /dev/null || true
    fi
    [ -n "$container" ] && buildah rm "$container" > /dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "test-image.sh: FAILED: $*" >&2
    if [ -s "$work/server.log" ]; then
        echo "--- server log (last 20 lines)" >&2
        tail -n 20 "$work/server.log" >&2
    fi
    exit 1
}

container=$(buildah from --quiet "oci-archive:$archive")
buildah inspect --type container "$container" > "$work/inspect.json"
if [ -z "$client" ]; then
    client="$work/deeprecall"
    cp "$(buildah mount "$container")/usr/local/bin/deeprecall" "$client"
    buildah umount "$container" > /dev/null
fi

echo "== the image's configuration"
python3 - "$work/inspect.json" > "$work/entrypoint" << 'EOF' || fail "image configuration"
import json, sys
config = json.load(open(sys.argv[1]))["OCIv1"]["config"]
env = dict(item.split("=", 1) for item in config.get("Env", []))
problems = []
if config.get("Entrypoint") != ["deeprecall", "serve"]:
    problems.append(f"entrypoint is {config.get('Entrypoint')}")
user = config.get("User", "")
if not all(part.isdigit() and int(part) != 0 for part in user.split(":")):
    problems.append(f"user {user!r} is not a numeric non-root user")
if env.get("DEEPRECALL_LISTEN") != "0.0.0.0:50051":
    problems.append(f"listens on {env.get('DEEPRECALL_LISTEN')!r}, not 0.0.0.0:50051")
for label in ("title", "version", "revision", "created", "licenses"):
    if not config.get("Labels", {}).get(f"org.opencontainers.image.{label}"):
        problems.append(f"no org.opencontainers.image.{label} label")
if problems:
    sys.exit("; ".join(problems))
print("\n".join(config["Entrypoint"]))
EOF
mapfile -t entrypoint < "$work/entrypoint"
echo "entrypoint ${entrypoint[*]}"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
endpoint="http://127.0.0.1:$port"
echo "== running the entrypoint on 127.0.0.1:$port"
buildah run --isolation chroot \
    --env "DEEPRECALL_LISTEN=127.0.0.1:$port" \
    --env "DEEPRECALL_SHUTDOWN_GRACE_SECONDS=$grace" \
    "$container" -- "${entrypoint[@]}" > "$work/server.log" 2>&1 &
runner=$!

# buildah answers SIGTERM by killing its child, as `docker stop` would not: the signal goes to
# the server process itself, found among this runner's descendants.
descendant_serving() {
    local pids=("$runner") found=""
    while [ ${#pids[@]} -gt 0 ] && [ -z "$found" ]; do
        local next=()
        for pid in "${pids[@]}"; do
            for child in $(cat "/proc/$pid/task/"*/children 2> /dev/null); do
                if tr '\0' ' ' < "/proc/$child/cmdline" 2> /dev/null \
                    | grep -Eq '^(/usr/local/bin/)?deeprecall serve'; then
                    found=$child
                fi
                next+=("$child")
            done
        done
        pids=("${next[@]}")
    done
    echo "$found"
}

# A second `buildah run` in the same container while the first still sets up its root (bind
# mounts of /dev and the like) makes one of them fail with "file exists": the probes start
# once the server process is running.
deadline=$((SECONDS + 60))
until [ -n "$(descendant_serving)" ]; do
    kill -0 "$runner" 2> /dev/null || fail "the server exited before it started"
    [ $SECONDS -lt $deadline ] || fail "the server process did not start within 60 s"
    sleep 0.2
done

echo "== deeprecall health, inside the image"
deadline=$((SECONDS + 60))
until buildah run --isolation chroot "$container" -- \
    deeprecall health --server "$endpoint" --timeout 2 > "$work/health.out" 2>&1; do
    kill -0 "$runner" 2> /dev/null || fail "the server exited before it served"
    [ $SECONDS -lt $deadline ] || fail "not SERVING within 60 s: $(cat "$work/health.out")"
    sleep 0.5
done
grep -q 'SERVING' "$work/health.out" || fail "health printed $(cat "$work/health.out")"
cat "$work/health.out"
server_pid=$(descendant_serving)
[ -n "$server_pid" ] || fail "cannot find the server process"
image_user=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["OCIv1"]["config"]["User"])' \
    "$work/inspect.json")
running_as=$(awk '/^Uid:/ { uid = $2 } /^Gid:/ { gid = $2 } END { print uid ":" gid }' \
    "/proc/$server_pid/status")
[ "$running_as" = "$image_user" ] || fail "the server runs as $running_as, not $image_user"
echo "the server runs as $running_as"

echo "== ingest and query from outside"
"$client" ingest --server "$endpoint" examples/handbook > "$work/ingest.out" \
    || fail "ingest: $(cat "$work/ingest.out")"
tail -n 1 "$work/ingest.out"
question="Which city is the maker of the Aurora Strip controller board headquartered in?"
"$client" query --server "$endpoint" --json "$question" > "$work/query.out" \
    || fail "query: $(cat "$work/query.out")"
python3 - "$work/query.out" << 'EOF' || fail "query result"
import json, sys
lines = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
result = next((line.get("result", line) for line in reversed(lines)), {})
answer = result.get("answer", "")
if "Tampere" not in answer:
    sys.exit(f"the answer does not name Tampere: {answer!r}")
print(f"answer: {answer[:120]}")
EOF

echo "== SIGTERM"
started=$SECONDS
kill -TERM "$server_pid"
limit=$((grace + 5))
status=0
if ! timeout "$limit" tail --pid="$server_pid" -f /dev/null; then
    fail "still running $limit s after SIGTERM"
fi
wait "$runner" || status=$?
server_pid=""
[ "$status" -eq 0 ] || fail "the server exited with status $status after SIGTERM"
grep -q 'SIGTERM received' "$work/server.log" || fail "the server did not log the SIGTERM"
echo "stopped cleanly $((SECONDS - started)) s after SIGTERM (limit $limit s)"
echo "image test passed"
