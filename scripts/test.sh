#!/usr/bin/env bash
# test.sh runs every Riffle test: setup, formatting, vet, and the whole suite
# with the race detector. Root tests (FUSE, runc, overlay) need root; CI is root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH=/usr/local/go/bin:$PATH

echo "== gofmt"
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then echo "gofmt would change:"; echo "$bad"; exit 1; fi
echo "== go vet"
go vet ./...
echo "== go test -race"
# -p 2: the machines have 2 cores. Per-package timeout keeps a hang from eating CI.
go test -race -p 2 -timeout 20m -count=1 ./... "$@"
