#!/usr/bin/env bash
# setup.sh installs the system packages Riffle needs on Debian or Ubuntu.
# It is idempotent: packages already present are left alone.
set -euo pipefail

pkgs=(
  fuse3          # fusermount3, /dev/fuse userland for streamfs
  runc           # the OCI runtime the executor drives
  containerd     # the outside reference in bench/cmd/startbench (full pull + ctr run)
  skopeo         # pushes images in tests, as users would
  iproute2       # ip netns / veth for network tests
  debootstrap    # builds a real Debian rootfs for fixtures
  busybox-static # a tiny static userland for test images
  attr           # getfattr/setfattr for xattr checks
  ca-certificates
  git
  gcc            # cgo for go test -race
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null 2>&1 || { echo "setup: Go 1.26 or newer is required (https://go.dev/dl/)" >&2; exit 1; }

[ -e /dev/fuse ] || echo "setup: warning: /dev/fuse is missing; streaming mounts will not work" >&2
echo "setup: ok"
