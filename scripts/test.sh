#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need
# (Debian packages: the registry, skopeo, umoci, busybox-static, FUSE tools),
# builds the strata binary, and runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(docker-registry skopeo umoci busybox-static fuse3 apache2-utils git pigz zstd xz-utils bzip2 e2fsprogs openssl ca-certificates)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "scripts/test.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "scripts/test.sh: missing Debian packages ${missing[*]}; tests that need them will skip" >&2
  fi
fi

# kubernetes-validate (PyPI) checks docs/ci's Kubernetes manifests against the
# bundled Kubernetes schemas (tests/tests/ci_manifests.rs). If it cannot be
# installed those tests skip, and fail under CI=true, naming the tool.
if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  echo "scripts/test.sh: installing kubernetes-validate from PyPI"
  python3 -m pip install --quiet kubernetes-validate==1.37.0 \
    || echo "scripts/test.sh: could not install kubernetes-validate; the docs/ci schema tests will skip (fail under CI=true)" >&2
fi

cargo build --workspace --bins
cargo test --workspace --no-fail-fast "$@"
