#!/usr/bin/env bash
#
# scripts/lib/dev_survives.sh — checks that scripts/dev rides out a stopped service or worker
# (SPEC section 9, last bullet). scripts/test runs it on whole-suite runs; it also runs by
# hand (it then builds and starts whatever the environment does not point at).
#
# Starts scripts/dev in a throwaway state folder with TASKLANE_DEV_RESTART_S=1 and its own
# Redis, kills that Redis with -9 and waits for it to be back (same port, jobs kept) and for
# the API to be ready again, kills the worker with -9 and waits for a new one, checks that
# scripts/dev said what stopped, then stops the stack with SIGTERM and checks that nothing
# it started is left running.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
# shellcheck source-path=SCRIPTDIR source=stack.sh
. "$ROOT/scripts/lib/stack.sh"

STATE=$(mktemp -d /tmp/tasklane-devcheck.XXXXXX)
OUT=$STATE.out
DEV_PID=

# shellcheck disable=SC2317 # called by the EXIT trap
finish() {
  local status=$?
  if [[ -n $DEV_PID ]] && proc_alive "$DEV_PID"; then
    kill -s TERM "$DEV_PID" 2>/dev/null || true
    wait "$DEV_PID" 2>/dev/null || true
  fi
  if ((status)); then
    printf -- '--- scripts/dev said:\n' >&2
    cat "$OUT" >&2 || true
  fi
  remove_state "$STATE"
  rm -f "$OUT"
  exit "$status"
}
trap finish EXIT

# until_true SECONDS WHAT CMD...: poll CMD until it succeeds, or fail after SECONDS.
until_true() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "dev stack check: timed out waiting for $what"
    proc_alive "$DEV_PID" || die "dev stack check: scripts/dev exited while waiting for $what"
    sleep 0.2
  done
}

pid_changed() { [[ $(pid_of "$STATE" "$1") != "$2" ]] && proc_alive "$(pid_of "$STATE" "$1")"; }
said() { grep -q -- "$1" "$OUT"; }

# Its own Redis (the one we kill); the rest may come from the environment (scripts/test's).
env -u REDIS_URL TASKLANE_DEV_STATE="$STATE" TASKLANE_DEV_RESTART_S=1 TASKLANE_ENV=dev \
  "$ROOT/scripts/dev" >"$OUT" 2>&1 &
DEV_PID=$!
until_true 600 "the dev stack to start" test -f "$STATE/env"
# shellcheck source=/dev/null
. "$STATE/env"
until_true 30 "the API ready" http_ok "$API_URL/health/ready"

redis=$(pid_of "$STATE" redis)
redis_port=${REDIS_URL##*:}
redis-cli -p "$redis_port" set tasklane:devcheck kept >/dev/null
kill -s KILL "$redis"
until_true 30 "scripts/dev to report Redis stopped" said "redis (pid $redis) stopped"
until_true 30 "a new Redis" pid_changed redis "$redis"
until_true 30 "Redis to answer on its port" redis_ok "$redis_port"
[[ $(redis-cli -p "$redis_port" get tasklane:devcheck) == kept ]] ||
  die "dev stack check: Redis came back without its data"
until_true 30 "the API ready again" http_ok "$API_URL/health/ready"
info "dev stack check: Redis killed (pid $redis), back as pid $(pid_of "$STATE" redis) with its data; API ready"

worker=$(pid_of "$STATE" worker-1)
kill -s KILL "$worker"
until_true 30 "scripts/dev to report the worker stopped" said "worker-1 (pid $worker) stopped"
until_true 30 "a new worker" pid_changed worker-1 "$worker"
info "dev stack check: worker killed (pid $worker), back as pid $(pid_of "$STATE" worker-1)"
proc_alive "$DEV_PID" || die "dev stack check: scripts/dev did not survive"

pids=()
while read -r name _; do pids+=("$(pid_of "$STATE" "$name")"); done <"$STATE/run/order"
kill -s TERM "$DEV_PID"
wait "$DEV_PID" || true
DEV_PID=
for pid in "${pids[@]}"; do
  ! proc_alive "$pid" || die "dev stack check: pid $pid still running after scripts/dev stopped"
done
info "dev stack check: passed (scripts/dev stopped everything it started: ${pids[*]})"
