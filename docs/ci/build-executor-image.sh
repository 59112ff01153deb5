#!/usr/bin/env bash
# Builds strata's executor image (the root Dockerfile) with strata itself.
#
#   docs/ci/build-executor-image.sh STRATA_FLAGS...
#   e.g. docs/ci/build-executor-image.sh --destination registry.example.com/strata/executor:0.1.0
#        docs/ci/build-executor-image.sh --target debug --destination registry.example.com/strata/executor:0.1.0-debug
#
# Compiles the static binary (glibc, statically linked, so it runs in an image
# with no libc), puts it and the CA bundle in a fresh build context, and runs
# that same binary on the root Dockerfile with the flags given. Run it as root
# (the Dockerfile has a RUN step). Environment: CARGO, CARGO_TARGET_DIR (cargo's),
# CA_BUNDLE (default /etc/ssl/certs/ca-certificates.crt).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
triple=$(uname -m)-unknown-linux-gnu
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$ca_bundle" ] || { echo "build-executor-image.sh: CA bundle $ca_bundle not found (apt-get install ca-certificates, or set CA_BUNDLE)" >&2; exit 1; }

(cd "$repo" && RUSTFLAGS='-C target-feature=+crt-static' \
  "${CARGO:-cargo}" build --release --target "$triple" -p strata-builder --bin strata)
strata=$target_dir/$triple/release/strata

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$strata" "$context/strata"
cp "$ca_bundle" "$context/ca-certificates.crt"

"$strata" --context "$context" --dockerfile "$repo/Dockerfile" "$@"
