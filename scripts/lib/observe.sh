# shellcheck shell=bash
#
# Observability helpers for scripts/dev and scripts/test (sourced after stack.sh, never
# executed), SPEC section 13:
#   check_prometheus_rules        promtool: the scrape configuration, the alert rules and their
#                                 unit tests under deploy/prometheus/ (scripts/test)
#   start_prometheus STATE API_URL WORKER_URL...
#                                 a real Prometheus (Debian's package) on a free loopback port,
#                                 scraping the API and every worker with the same rules; exports
#                                 PROMETHEUS_URL and appends it to STATE/env (scripts/dev with
#                                 TASKLANE_OBSERVE=1)
# Prometheus keeps its data in STATE/prometheus/.

PROMETHEUS_DIR=deploy/prometheus

check_prometheus_rules() {
  command -v promtool >/dev/null || die "promtool not found (Debian package prometheus; scripts/lib/stack.sh installs it)"
  promtool check config --syntax-only "$PROMETHEUS_DIR/prometheus.yml" >/dev/null &&
    promtool check rules "$PROMETHEUS_DIR"/rules/*.yml >/dev/null &&
    promtool test rules "$PROMETHEUS_DIR"/tests/*.yml
}

# The scrape configuration of a local stack: deploy/prometheus/prometheus.yml's settings and
# rules, with the API and the given workers as static loopback targets.
write_prometheus_config() {
  local file=$1 api=$2
  shift 2
  local worker targets=()
  for worker in "$@"; do targets+=("\"${worker#http://}\""); done
  cat >"$file" <<CONFIG
# Written by scripts/dev (scripts/lib/observe.sh) from deploy/prometheus/prometheus.yml.
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - $ROOT/$PROMETHEUS_DIR/rules/tasklane.yml
scrape_configs:
  - job_name: tasklane-api
    static_configs:
      - targets: ["${api#http://}"]
  - job_name: tasklane-worker
    static_configs:
      - targets: [$(IFS=,; echo "${targets[*]}")]
CONFIG
}

start_prometheus() {
  local state=$1 api=$2
  shift 2
  command -v prometheus >/dev/null || die "prometheus not found (Debian package prometheus)"
  local port
  port=$(free_port "$state")
  mkdir -p "$state/prometheus/data"
  write_prometheus_config "$state/prometheus/prometheus.yml" "$api" "$@"
  promtool check config "$state/prometheus/prometheus.yml" >/dev/null ||
    die "generated Prometheus configuration is invalid: $state/prometheus/prometheus.yml"
  spawn "$state" prometheus TERM 10 prometheus \
    --config.file="$state/prometheus/prometheus.yml" \
    --storage.tsdb.path="$state/prometheus/data" \
    --storage.tsdb.retention.time=2d \
    --web.listen-address="127.0.0.1:$port"
  export PROMETHEUS_URL=http://127.0.0.1:$port
  wait_ready "$state" prometheus http_ok "$PROMETHEUS_URL/-/ready"
  if [[ -f $state/env ]]; then printf 'PROMETHEUS_URL=%s\n' "$PROMETHEUS_URL" >>"$state/env"; fi
  info "Prometheus $PROMETHEUS_URL (targets: $PROMETHEUS_URL/targets, alerts: $PROMETHEUS_URL/alerts)"
}
