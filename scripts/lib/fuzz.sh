# shellcheck shell=bash
#
# Schemathesis over the API's own OpenAPI document, against a real tasklane-api and
# tasklane-worker on the services scripts/test started (sourced after stack.sh).
#
# Checks (SPEC section 2 and issue 18): no 5xx, every status / content type / body the
# schema declares, and every request that breaks the schema refused. Operations that stream
# (`GET /api/v1/events`, SSE) are left out: a property test cannot read an endless body.
#
# Knobs: TASKLANE_FUZZ_EXAMPLES (examples per operation and phase, default 100: about 1.5
# minutes on 2 cores), TASKLANE_FUZZ_WORKERS (default 2), TASKLANE_FUZZ_SEED (default
# random; the summary prints the seed that replays a run). Output: $FUZZ_REPORT_DIR (target/schemathesis) keeps
# the JUnit and NDJSON reports and the API and worker logs of the run.

SCHEMATHESIS_VERSION=4.32.5
FUZZ_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
FUZZ_CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection

schemathesis_dir() { printf '%s\n' "$TASKLANE_TOOLS_DIR/schemathesis-$SCHEMATHESIS_VERSION"; }

# A venv of its own in the tools cache, one per pinned version, shared by every clone.
ensure_schemathesis() {
  ensure_venv "$(schemathesis_dir)" st "schemathesis==$SCHEMATHESIS_VERSION"
}

# start_fuzz_stack STATE BIN_DIR: a database of its own on the running PostgreSQL, migrated,
# then tasklane-api and one tasklane-worker as scripts/dev starts them. Sets FUZZ_API_URL.
FUZZ_API_URL=
start_fuzz_stack() {
  local state=$1 bin=$2 api_addr worker_addr db_url
  db_url=${DATABASE_URL%/*}/tasklane_fuzz
  "$(pg_bin_dir)/psql" "${DATABASE_URL%/*}/postgres" -qtA \
    -c "drop database if exists tasklane_fuzz with (force)" -c "create database tasklane_fuzz" \
    >/dev/null
  api_addr=127.0.0.1:$(free_port "$state")
  worker_addr=127.0.0.1:$(free_port "$state")
  FUZZ_API_URL=http://$api_addr
  # The environment scripts/dev gives the binaries, on this run's services.
  local env=(env NO_COLOR=1 DATABASE_URL="$db_url" TASKLANE_REDIS_PREFIX=fuzz
    TASKLANE_API_ADDR="$api_addr" TASKLANE_WORKER_ADDR="$worker_addr"
    PUBLIC_URL="$FUZZ_API_URL" JWT_SECRET=tasklane-fuzz-jwt-secret-not-for-production
    # The daily quota would turn every task creation after the 50th into a 429, and the
    # generated titles and descriptions would never reach the database.
    TASKLANE_TASKS_DAILY_QUOTA=1000000)
  "${env[@]}" "$bin/tasklane-api" migrate >>"$state/logs/fuzz-migrate.log" 2>&1 ||
    { log_tail "$state" fuzz-migrate; die "tasklane-api migrate (fuzz database) failed"; }
  spawn "$state" fuzz-api TERM 30 "${env[@]}" "$bin/tasklane-api"
  spawn "$state" fuzz-worker TERM 30 "${env[@]}" "$bin/tasklane-worker"
  wait_ready "$state" fuzz-api http_ok "$FUZZ_API_URL/health/ready"
  wait_ready "$state" fuzz-worker http_ok "http://$worker_addr/health/live"
}

# A plain user's access token: registered through the API like any client.
fuzz_user_token() {
  local email="fuzz-$RANDOM$RANDOM@example.test"
  curl -fsS -X POST "$FUZZ_API_URL/api/v1/auth/register" -H 'content-type: application/json' \
    -d "{\"email\":\"$email\",\"password\":\"correct horse battery staple fuzz\"}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
}

# run_fuzz STATE REPORT_DIR: schemathesis over the served document, in two passes: every
# phase with valid and invalid data, then fuzzing with valid data only (in the first pass
# most generated requests are refused early as invalid, and too few valid ones reach the
# database to find what it refuses, such as NUL in text). Returns non-zero on any failure.
run_fuzz() {
  local state=$1 report=$2 token status=0 name
  rm -rf -- "$report"
  mkdir -p "$report"
  token=$(fuzz_user_token) || die "cannot register the fuzzing user"
  local common=(run "$FUZZ_API_URL/api/openapi.json" --url "$FUZZ_API_URL"
    -H "Authorization: Bearer $token"
    --checks "$FUZZ_CHECKS"
    --max-examples "${TASKLANE_FUZZ_EXAMPLES:-100}"
    --workers "${TASKLANE_FUZZ_WORKERS:-2}"
    --request-timeout 10
    --exclude-path /api/v1/events
    --continue-on-failure
    --suppress-health-check all
    --no-color
    # Complete reproductions (the token and passwords are this throwaway stack's own).
    --output-sanitize false)
  if [[ -n ${TASKLANE_FUZZ_SEED:-} ]]; then common+=(--seed "$TASKLANE_FUZZ_SEED"); fi
  fuzz_pass "$report/all" "${common[@]}" --mode all --phases examples,coverage,fuzzing ||
    status=1
  fuzz_pass "$report/positive" "${common[@]}" --mode positive --phases fuzzing || status=1
  # Every finding on one line each (operation, check, what, curl), for issues and reviews.
  python3 "$FUZZ_LIB_DIR/fuzz_failures.py" "$report"/{all,positive}/output.txt \
    >"$report/failures.md" || true
  if ((status)); then
    info "schemathesis failures ($report/failures.md):"
    cut -c1-200 "$report/failures.md" >&2
  fi
  # The processes must have outlived the run: a crash mid-fuzz is a failure of its own.
  for name in fuzz-api fuzz-worker; do
    cp -f "$state/logs/$name.log" "$report/" 2>/dev/null || true
    if ! proc_alive "$(pid_of "$state" "$name")"; then
      log_tail "$state" "$name"
      info "$name exited during the schemathesis run"
      status=1
    fi
  done
  return "$status"
}

# fuzz_pass DIR ARGS...: one schemathesis run, its output and reports kept in DIR.
fuzz_pass() {
  local dir=$1 status=0
  shift
  mkdir -p "$dir"
  info "schemathesis $SCHEMATHESIS_VERSION against $FUZZ_API_URL (report in $dir)"
  # The command, replayable, without the token.
  printf '%q ' st "$@" | sed 's/Bearer\\ [^ ]*/Bearer\\ $TOKEN/' >"$dir/command"
  echo >>"$dir/command"
  # From DIR: schemathesis keeps its state (.schemathesis/) in the working directory.
  run_job env -C "$dir" "$(schemathesis_dir)/bin/st" "$@" --report junit,ndjson \
    --report-dir "$dir" > >(tee "$dir/output.txt") 2>&1 || status=$?
  return "$status"
}
