#!/usr/bin/env bash
# Assembles the DeepRecall runtime image of deploy/Dockerfile FROM scratch with buildah, from a
# binary built on this machine and the shared libraries it links (read off ldd), and exports
# it as an OCI archive. Nothing is pulled: for machines without registry access, and for CI.
#
#   deploy/build-image.sh [--binary PATH] [--output FILE] [--tag NAME]
#
#   --binary  the deeprecall binary to package; default: the release build
#             ($CARGO_TARGET_DIR or target/, built with `cargo build --release` if absent)
#   --output  the OCI archive to write; default: <target dir>/deeprecall-image.oci.tar
#   --tag     the image name inside the archive; default: deeprecall:<version of Cargo.toml>
#
# Needs buildah (Debian: apt-get install buildah) and runs as root with vfs storage and chroot
# isolation, which work without a container runtime, overlay mounts or user namespaces, in
# an image store of its own ($DEEPRECALL_BUILDAH_STORAGE, default /var/tmp/deeprecall-buildah).
# The image matches the Dockerfile's: the binary in /usr/local/bin, user 65532, data in
# /var/lib/deeprecall, listening on 0.0.0.0:50051, ENTRYPOINT ["deeprecall", "serve"]. Its
# libraries come from this machine (Debian 12, like distroless cc-debian12), so the archive
# runs on any x86-64 Linux.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir=${CARGO_TARGET_DIR:-target}
binary=""
output=""
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
tag="deeprecall:${version}"
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=$2; shift 2 ;;
        --output) output=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-image.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$binary" ]; then
    binary="$target_dir/release/deeprecall"
    if [ ! -x "$binary" ]; then
        echo "== cargo build --release (no release binary at $binary)"
        cargo build --release --locked --bin deeprecall
    fi
fi
output=${output:-$target_dir/deeprecall-image.oci.tar}
[ -x "$binary" ] || { echo "build-image.sh: $binary is not an executable" >&2; exit 1; }
command -v buildah > /dev/null || {
    echo "build-image.sh: buildah is missing (apt-get install buildah)" >&2
    exit 1
}

# Its own image store, so that neither the machine's store nor its storage driver matter;
# deploy/test-image.sh uses the same.
storage=${DEEPRECALL_BUILDAH_STORAGE:-${TMPDIR:-/var/tmp}/deeprecall-buildah}
buildah() {
    command buildah --storage-driver vfs --root "$storage/root" --runroot "$storage/run" "$@"
}
export BUILDAH_ISOLATION=chroot
root=$(mktemp -d)
chmod 0755 "$root"
container=""
cleanup() {
    [ -n "$container" ] && buildah rm "$container" > /dev/null 2>&1 || true
    rm -rf "$root" "${owned:-}"
}
trap cleanup EXIT

# The file system: the binary, every library ldd names (at the path the dynamic loader looks
# for it, the loader itself included), CA certificates for HTTPS to model providers, the
# nonroot user of distroless, a writable /tmp and the data directory.
install -D -m 0755 "$binary" "$root/usr/local/bin/deeprecall"
libraries=$(ldd "$binary" | awk '/=> \// { print $3 } /^[[:space:]]*\// { print $1 }')
for library in $libraries; do
    install -D -m 0755 "$(readlink -f "$library")" "$root$library"
done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$root/etc"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
install -d -m 1777 "$root/tmp"
install -d -m 0755 "$root/var/lib" "$root/home"
owned=$(mktemp -d)
chmod 0750 "$owned"

revision=$(git rev-parse HEAD 2> /dev/null || echo unknown)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
container=$(buildah from scratch)
buildah copy --quiet "$container" "$root/" / > /dev/null
# buildah copy gives files to root unless told otherwise: the user's own directories.
for directory in /var/lib/deeprecall /home/nonroot; do
    buildah copy --quiet --chown 65532:65532 "$container" "$owned/" "$directory" > /dev/null
done
label_args=()
for pair in \
    "org.opencontainers.image.title=deeprecall" \
    "org.opencontainers.image.description=Recursive, multi-hop question answering over document collections, served over gRPC" \
    "org.opencontainers.image.version=$version" \
    "org.opencontainers.image.revision=$revision" \
    "org.opencontainers.image.created=$created" \
    "org.opencontainers.image.licenses=Apache-2.0"; do
    label_args+=(--label "$pair" --annotation "$pair")
done
buildah config \
    "${label_args[@]}" \
    --env PATH=/usr/local/bin \
    --env DEEPRECALL_LISTEN=0.0.0.0:50051 \
    --env DEEPRECALL_DATA_DIR=/var/lib/deeprecall \
    --env DEEPRECALL_LOG_FORMAT=json \
    --workingdir /var/lib/deeprecall \
    --user 65532:65532 \
    --port 50051 \
    --port 9464 \
    --stop-signal SIGTERM \
    --entrypoint '["deeprecall", "serve"]' \
    --cmd '[]' \
    "$container"
image_id=$(buildah commit --quiet --format oci --rm "$container" "$tag")
container=""
mkdir -p "$(dirname "$output")"
rm -f "$output"
buildah push --quiet "$tag" "oci-archive:$output:$tag"
echo "image $tag ($image_id) written to $output ($(du -h "$output" | cut -f1))"
