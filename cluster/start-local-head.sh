#!/usr/bin/env bash
# Start a Ray head on this machine: bound to loopback, job server (dashboard) on 8265, Ray's token
# authentication on, and the project's .venv as the interpreter its jobs run.
# Usage: cluster/start-local-head.sh [NUM_CPUS [more `ray start` flags...]]   (stop: .venv/bin/ray stop)
# Then:  .venv/bin/nmlbench submit quick --address http://127.0.0.1:8265 --wait
# Environment: VENV (default .venv), RAY_PORT (6379), DASHBOARD_PORT (8265); the token comes from
# RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (generated there, mode 600, if none is set).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-$PWD/.venv}"
RAY="${RAY:-$VENV/bin/ray}"
# A job's entrypoint (`python -m benchmark.cli run ...`) runs the `python` on the head's PATH. The
# head passes its own environment to jobs, so the project's interpreter goes first here, whatever
# the calling shell's PATH holds (without this a shell outside the venv gives jobs the system
# python: "No module named 'typer'").
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
# Token authentication always: the job server runs any command it is sent. (`ray start` on its own
# turns it on only when a token already exists.) Clients send the same token: `nmlbench submit`
# finds it in ~/.ray/auth_token on this machine.
export RAY_AUTH_MODE=token
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ] && [ ! -s "$HOME/.ray/auth_token" ]; then
  (umask 077; "$RAY" get-auth-token --generate >/dev/null)
  chmod 600 "$HOME/.ray/auth_token"
fi
NUM_CPUS="${1:-$(nproc)}"
exec "$RAY" start --head --node-ip-address=127.0.0.1 --port="${RAY_PORT:-6379}" \
  --dashboard-host=127.0.0.1 --dashboard-port="${DASHBOARD_PORT:-8265}" \
  --num-cpus="$NUM_CPUS" --disable-usage-stats "${@:2}"
