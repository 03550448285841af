#!/usr/bin/env bash
# index-speed.sh: how fast does internal/index build a gzip layer's index,
# compared with `gzip -dc > /dev/null` on the same layer?
#
# It makes a realistic layer (a tar of system directories: binaries,
# Go sources and tools, Python libraries; about 600 MB uncompressed, about 200 MB as
# gzip -6), then times gzip -dc and the index build (bench/cmd/indexbench)
# for each span size, and prints MB/s of both and their ratio.
#
# Usage: bench/index-speed.sh [workdir]     (default: a temp dir, removed)
# Env:   SPANS="1,2,4,8"  span sizes in MiB
#        DIRS="usr/bin ..."  paths under / to pack
#        KEEP=1  keep the generated layer
set -euo pipefail

cd "$(dirname "$0")/.."
SPANS=${SPANS:-1,2,4,8}
DIRS=${DIRS:-usr/bin usr/local/go/src usr/local/go/pkg usr/lib/python3 usr/lib/python3.11}
work=${1:-$(mktemp -d)}
mkdir -p "$work"
if [[ -z "${1:-}" && -z "${KEEP:-}" ]]; then trap 'rm -rf "$work"' EXIT; fi
layer="$work/layer.tar.gz"

if [[ ! -s "$layer" ]]; then
	echo "== making the layer from /{${DIRS// /,}}"
	# shellcheck disable=SC2086
	tar -C / --sort=name --warning=no-file-changed --ignore-failed-read -cf - $DIRS 2>/dev/null | gzip -6 -n >"$layer" || true
fi
blob=$(stat -c %s "$layer")
tarsize=$(gzip -dc "$layer" | wc -c)
echo "layer: $((blob / 1000000)) MB gzip, $((tarsize / 1000000)) MB tar"

go build -o "$work/indexbench" ./bench/cmd/indexbench

# Warm the page cache, then take the best of three for gzip -dc.
cat "$layer" >/dev/null
best="" bestcpu=""
TIMEFORMAT='%R %U %S'
for _ in 1 2 3; do
	read -r real user sys < <({ time gzip -dc "$layer" >/dev/null; } 2>&1)
	best=$(awk -v t="$real" -v b="$best" 'BEGIN { if (b == "" || t < b) b = t; print b }')
	bestcpu=$(awk -v t="$user" -v u="$sys" -v b="$bestcpu" 'BEGIN { t += u; if (b == "" || t < b) b = t; print b }')
done
gz_blob=$(awk -v n="$blob" -v t="$best" 'BEGIN { print n / 1e6 / t }')
gz_tar=$(awk -v n="$tarsize" -v t="$best" 'BEGIN { print n / 1e6 / t }')
printf "gzip -dc: %.2f s wall, %.2f s cpu, %.1f MB/s of blob, %.1f MB/s of tar\n" "$best" "$bestcpu" "$gz_blob" "$gz_tar"

echo "== index build (best of 2 runs per span size)"
"$work/indexbench" -in "$layer" -span "$SPANS" -runs 2 | tee "$work/index.txt"

echo "== index build speed relative to gzip -dc (wall time; cpu time, which is steadier on a busy machine)"
awk -v gz="$gz_tar" -v gzcpu="$bestcpu" 'NR > 1 { printf "%-8s wall %.2f  cpu %.2f\n", $1, $5 / gz, gzcpu / $6 }' "$work/index.txt"
