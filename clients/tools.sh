#!/usr/bin/env bash
# Installs the pinned client tool chain, idempotently, from package registries only:
#   codegen  buf and protoc-gen-es (npm, clients/typescript/package-lock.json), grpcio-tools and
#            mypy-protobuf (PyPI, clients/python/requirements-codegen.txt), protoc-gen-go and
#            protoc-gen-go-grpc (Debian bookworm).
#   node     the TypeScript package's node_modules (npm ci); needs Node.js >= 20 with npm.
#   go       Go 1.19 and the gRPC/protobuf libraries, from Debian (used in GOPATH mode).
#   python   a virtualenv for the Python tests (clients/python/requirements-test.txt).
# Usage: clients/tools.sh [codegen|node|go|python]...   (no argument: codegen)
# Everything cached goes under $DEEPRECALL_CLIENT_TOOLS (default target/client-tools); a
# component is reinstalled only when its lock file changes. Debian packages are installed with
# apt-get when missing (as root, or through sudo).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_dir=${DEEPRECALL_CLIENT_TOOLS:-$repo/target/client-tools}
mkdir -p "$tools_dir"

# The generators' versions are part of the generated files' headers and content: another
# version would make CI's regeneration diff fail, so say which one is expected.
readonly PROTOC_GEN_GO_VERSION="protoc-gen-go v1.28.1"
readonly PROTOC_GEN_GO_GRPC_DEB="1.33.3"

die() {
    echo "clients/tools.sh: $*" >&2
    exit 1
}

# Serialises installs of one component across concurrent runs (CI check and tests).
locked() {
    local name=$1
    shift
    exec {lock_fd}> "$tools_dir/.lock-$name"
    flock "$lock_fd"
    "$@"
    flock -u "$lock_fd"
}

apt_updated=false
apt_install() {
    local missing=()
    local package
    for package in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2> /dev/null | grep -q "install ok installed"; then
            missing+=("$package")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo > /dev/null ||
            die "Debian packages ${missing[*]} are missing; install them as root (apt-get install ${missing[*]})"
        sudo=(sudo -n)
    fi
    command -v apt-get > /dev/null ||
        die "Debian packages ${missing[*]} are missing and apt-get is not available"
    echo "== apt-get install ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! $apt_updated; then
        "${sudo[@]}" apt-get update -q > /dev/null || die "apt-get update failed"
        apt_updated=true
    fi
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" > /dev/null ||
        die "apt-get install ${missing[*]} failed"
}

install_go_plugins() {
    apt_install protobuf-compiler protoc-gen-go protoc-gen-go-grpc
    local found
    found=$(protoc-gen-go --version 2>&1 || true)
    [ "$found" = "$PROTOC_GEN_GO_VERSION" ] ||
        die "expected $PROTOC_GEN_GO_VERSION (Debian bookworm), found '$found'"
    found=$(dpkg-query -W -f='${Version}' protoc-gen-go-grpc)
    case $found in
        "$PROTOC_GEN_GO_GRPC_DEB"-*) ;;
        *) die "expected protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC_DEB (Debian bookworm), found $found" ;;
    esac
}

install_go() {
    # golang-github-golang-protobuf-1-5-dev: grpc-go 1.33 marshals through
    # github.com/golang/protobuf, whose 1.3 branch (the other alternative) predates the v2 API
    # the generated messages use.
    apt_install golang-go golang-google-grpc-dev golang-google-protobuf-dev \
        golang-github-golang-protobuf-1-5-dev
}

install_node() {
    command -v node > /dev/null && command -v npm > /dev/null ||
        die "Node.js >= 20 with npm is required (Debian bookworm's nodejs is 18, too old)"
    local major
    major=$(node -p 'process.versions.node.split(".")[0]')
    [ "$major" -ge 20 ] || die "Node.js >= 20 is required, found $(node --version)"
    local package=$repo/clients/typescript
    local stamp=$package/node_modules/.deeprecall-lock
    local want
    want=$(sha256sum "$package/package-lock.json" | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2> /dev/null)" != "$want" ]; then
        echo "== npm ci (clients/typescript)" >&2
        # --ignore-scripts: no install script may download anything (buf's postinstall only
        # optimises the lookup of its platform binary, which npm installs as a dependency), and
        # `prepare` would build before the sources are generated.
        (cd "$package" && npm ci --ignore-scripts --no-audit --no-fund > /dev/null) ||
            die "npm ci failed in clients/typescript"
        echo "$want" > "$stamp"
    fi
}

need_python() {
    command -v python3 > /dev/null || apt_install python3
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        die "Python >= 3.10 is required, found $(python3 --version)"
    python3 -c 'import venv, ensurepip' 2> /dev/null || apt_install python3-venv
}

# Makes (or refreshes) a virtualenv at $1 with the pinned requirements file $2.
python_venv() {
    local venv=$1 requirements=$2
    local want
    want=$(sha256sum "$requirements" | cut -d' ' -f1)
    if [ "$(cat "$venv/.deeprecall-lock" 2> /dev/null)" != "$want" ]; then
        echo "== virtualenv $venv" >&2
        rm -rf "$venv"
        python3 -m venv "$venv" || die "python3 -m venv failed"
        "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements" ||
            die "pip install -r $requirements failed"
        echo "$want" > "$venv/.deeprecall-lock"
    fi
}

install_python_codegen() {
    need_python
    python_venv "$tools_dir/codegen-venv" "$repo/clients/python/requirements-codegen.txt"
}

install_python_test() {
    need_python
    python_venv "$tools_dir/python-test-venv" "$repo/clients/python/requirements-test.txt"
}

components=("$@")
[ ${#components[@]} -eq 0 ] && components=(codegen)
for component in "${components[@]}"; do
    case $component in
        codegen)
            locked apt install_go_plugins
            locked node install_node
            locked python-codegen install_python_codegen
            ;;
        node) locked node install_node ;;
        go) locked apt install_go ;;
        python) locked python install_python_test ;;
        *) die "unknown component '$component' (codegen, node, go, python)" ;;
    esac
done
