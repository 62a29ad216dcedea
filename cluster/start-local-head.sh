#!/usr/bin/env bash
# Start a Ray head on this machine, bound to loopback, with the job server (dashboard) on 8265.
# Usage: cluster/start-local-head.sh [NUM_CPUS]   (stop with: .venv/bin/ray stop)
# Then:  .venv/bin/nmlbench submit quick --address http://127.0.0.1:8265 --wait
set -euo pipefail
cd "$(dirname "$0")/.."
RAY="${RAY:-.venv/bin/ray}"
NUM_CPUS="${1:-$(nproc)}"
exec "$RAY" start --head --node-ip-address=127.0.0.1 --port="${RAY_PORT:-6379}" \
  --dashboard-host=127.0.0.1 --dashboard-port="${DASHBOARD_PORT:-8265}" \
  --num-cpus="$NUM_CPUS" --disable-usage-stats
