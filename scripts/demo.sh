#!/usr/bin/env bash
# The README's demo: on a fresh machine, prepares what it needs, builds
# fixtures/demo (FROM a busybox base made locally from Debian's busybox-static,
# given with --build-context; COPY, RUN and metadata), writes an OCI layout and
# a docker-archive, and prints the image digest and where the outputs are.
#
#   bash scripts/demo.sh [OUT_DIR]      (default: ./demo-out)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-demo-out}")

need=()
command -v busybox >/dev/null || [ -x /bin/busybox ] || need+=(busybox-static)
command -v cargo >/dev/null || { echo "demo.sh: cargo is needed (https://rustup.rs)" >&2; exit 1; }
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "demo.sh: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "demo.sh: please install ${need[*]} (apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

# The dev profile builds dependencies optimised (see Cargo.toml), and shares
# its build with scripts/test.sh.
echo "demo.sh: building strata"
cargo build -q -p strata-builder --bin strata
strata=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/strata

rm -rf "$out"
mkdir -p "$out"
echo "demo.sh: making the busybox base image in $out/base"
bash fixtures/make-base-images.sh "$out/base" latest >/dev/null

"$strata" \
  --context fixtures/demo \
  --build-context "base=oci-layout://$out/base" \
  --destination strata-demo:latest \
  --no-push \
  --oci-layout-path "$out/oci" \
  --tar-path "$out/strata-demo.tar" \
  --digest-file "$out/digest" \
  --log-format text

echo
echo "image digest:   $(cat "$out/digest")"
echo "OCI layout:     $out/oci (tag latest)"
echo "docker-archive: $out/strata-demo.tar (docker load -i, or skopeo copy docker-archive:…)"
