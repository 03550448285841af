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
  chromium       # headless browser for the console's tests (internal/console)
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# apt runs while another apt or dpkg (unattended-upgrades on a fresh VM, a
# second terminal) holds its lock: wait for it rather than fail, for up to
# RIFFLE_SETUP_LOCK_TIMEOUT seconds (default 600). A failure prints the
# command and apt's own output, which -qq would otherwise hide.
lock_timeout=${RIFFLE_SETUP_LOCK_TIMEOUT:-600}
lock_poll=${RIFFLE_SETUP_LOCK_POLL:-5}
apt_get() {
  local log start=$SECONDS rc
  log=$(mktemp)
  while :; do
    rc=0
    $SUDO apt-get -o DPkg::Lock::Timeout="$lock_timeout" "$@" >"$log" 2>&1 || rc=$?
    if [ $rc -eq 0 ]; then rm -f "$log"; return 0; fi
    if grep -qiE 'could not get lock|unable to acquire the dpkg frontend lock|is another process using it' "$log" &&
      [ $((SECONDS - start)) -lt "$lock_timeout" ]; then
      echo "setup: waiting for another apt/dpkg to release its lock ($(grep -m1 -iE 'lock' "$log"))" >&2
      sleep "$lock_poll"
      continue
    fi
    echo "setup: 'apt-get $*' failed (exit $rc); its output:" >&2
    sed 's/^/  | /' "$log" >&2
    rm -f "$log"
    exit $rc
  done
}

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_get update -qq
  apt_get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH=/usr/local/go/bin:$PATH
fi
command -v go >/dev/null 2>&1 || { echo "setup: Go 1.26 or newer is required (https://go.dev/dl/)" >&2; exit 1; }

[ -e /dev/fuse ] || echo "setup: warning: /dev/fuse is missing; streaming mounts will not work" >&2
echo "setup: ok"
