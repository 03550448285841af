#!/usr/bin/env bash
# demo.sh: Riffle's main job on the embedded default, from a fresh clone.
# It sets up the machine, starts `riffle serve` on a private data dir, pushes
# an image to the embedded registry, and runs a Google Batch job whose
# container streams that image: 4 tasks, 2 at a time. It prints the job's
# states, events and logs. Needs root (runc containers, FUSE mounts).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "demo: run as root: containers (runc) and streamed images (FUSE) need it" >&2
  exit 1
fi
# setup prints one line when all is installed, and apt's errors when not.
bash scripts/setup.sh
export PATH=/usr/local/go/bin:$PATH

demo=$PWD/.riffle-demo
rm -rf "$demo"; mkdir -p "$demo"
echo "== building riffle"
go build -ldflags "-X main.commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" -o bin/riffle ./cmd/riffle
bin/riffle version
riffle() { bin/riffle "$@"; }

echo "== starting riffle serve (data dir $demo/data)"
bin/riffle serve --data-dir "$demo/data" --listen 127.0.0.1:0 >"$demo/serve.log" 2>&1 &
serve_pid=$!
trap 'kill $serve_pid 2>/dev/null; wait $serve_pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$demo/data/serve.addr" ] && break; sleep 0.1; done
addr=$(cat "$demo/data/serve.addr")
curl -fsS "http://$addr/healthz" >/dev/null
echo "   serving on http://$addr (registry /v2/, Batch API /v1/, /metrics)"
export RIFFLE_SERVER=$addr
# The CLI sends the admin token riffle serve wrote at first start.
export RIFFLE_TOKEN=$(cat "$demo/data/admin.token")

img=$addr/demo-project/demo-repo/busybox:v1
echo "== generating an image and pushing it to $img"
riffle dev image --kind busybox --out "$demo/layout"
riffle image push "$demo/layout" "$img"
riffle image inspect "$img"

echo "== submitting a Batch job that streams its image"
cat >"$demo/job.json" <<JSON
{
  "taskGroups": [{
    "taskCount": 4,
    "parallelism": 2,
    "taskSpec": {
      "runnables": [{
        "container": {
          "imageUri": "$img",
          "enableImageStreaming": true,
          "commands": ["sh", "-c", "echo task \$BATCH_TASK_INDEX of \$BATCH_TASK_COUNT; cat /data/hello.txt; sha256sum /data/blob.bin"]
        }
      }],
      "maxRetryCount": 1
    }
  }],
  "logsPolicy": {"destination": "PATH", "logsPath": "$demo/job-logs.txt"}
}
JSON
riffle batch jobs submit hello-riffle --location us-central1 --config "$demo/job.json"

echo "== logs (followed until the job ends)"
riffle batch jobs logs hello-riffle --location us-central1 --follow

echo "== the job"
riffle batch jobs describe hello-riffle --location us-central1
echo "== its tasks"
riffle batch tasks list --job hello-riffle --location us-central1
echo "== how task 0's image arrived"
riffle batch tasks describe 0 --job hello-riffle --location us-central1 --format json | grep -i '"description"' | grep -i 'image' || true
echo "== done; server log in $demo/serve.log"
