#!/usr/bin/env bash
# N processes of `python -m ftjax.main ARGS` on this host, joined through JAX's distributed runtime
# on 127.0.0.1 (gloo collectives on CPU). Each process sees its own devices: one CPU device, or
# $FTJAX_LOCAL_DEVICES simulated ones. Exits non-zero if any process does; the others are then stopped.
#   launch/local.sh 2 --config=configs/bert_mlm_pydoc.py:smoke --workdir=/tmp/w
set -uo pipefail
N=${1:?usage: launch/local.sh N <ftjax.main args>}; shift
PORT=${FTJAX_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
cd "$(dirname "$0")/.."
export FTJAX_COORDINATOR=127.0.0.1:$PORT FTJAX_NUM_PROCESSES=$N JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
if [[ -n "${FTJAX_LOCAL_DEVICES:-}" ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$FTJAX_LOCAL_DEVICES"
fi
pids=()
for ((i = 0; i < N; i++)); do
  FTJAX_PROCESS_ID=$i python -m ftjax.main "$@" > >(sed -u "s/^/[$i] /") 2> >(sed -u "s/^/[$i] /" >&2) &
  pids+=($!)
done
trap 'kill ${pids[*]} 2>/dev/null' INT TERM
status=0
running=("${pids[@]}")
while ((${#running[@]})); do
  still=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
      continue
    fi
    wait "$pid"
    rc=$?
    if [[ $rc -ne 0 && $status -eq 0 ]]; then
      status=$rc
      echo "local.sh: a process exited with status $rc; stopping the others" >&2
      kill "${pids[@]}" 2>/dev/null
    fi
  done
  running=("${still[@]}")
  ((${#running[@]})) && sleep 1
done
exit $status
