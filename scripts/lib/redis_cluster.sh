# shellcheck shell=bash
#
# A local Redis Cluster (SPEC section 12), sourced by stack.sh (never executed), for
# `TASKLANE_REDIS=cluster scripts/dev` and `TASKLANE_TEST_CLUSTER=1 scripts/test`:
#   start_redis_cluster STATE   3 masters and 3 replicas on free 127.0.0.1 ports, each a
#                               `redis-server --cluster-enabled yes` with the production
#                               persistence settings and its own folder under
#                               STATE/redis-cluster/, registered and stopped by PID like every
#                               service; joined by `redis-cli --cluster create`, ready once
#                               every node says cluster_state:ok and node 1 sees 3 masters
#                               owning every slot and 3 replicas. Exports
#                               TASKLANE_REDIS_CLUSTER_NODES=redis://127.0.0.1:p1,...
#   check_redis_cluster         prints the shape the running cluster has; fails unless it is
#                               3 masters with all 16384 slots and 3 replicas
#
# scripts/dev keeps its state folder: the next run reuses the same ports, so the nodes find
# each other again with their data. When a port was taken meanwhile (or the last run never
# finished creating the cluster), the cluster starts empty on new ports; the reconciler puts
# back the jobs in flight (README "Job records and the reconciler").

REDIS_CLUSTER_MASTERS=3
REDIS_CLUSTER_REPLICAS=1 # per master

redis_cluster_size() { echo $((REDIS_CLUSTER_MASTERS * (1 + REDIS_CLUSTER_REPLICAS))); }

redis_cluster_ok() {
  redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok'
}

# "<masters with slots> <replicas following a master> <slots assigned>" as node PORT sees it.
redis_cluster_shape() {
  local port=$1 slots
  slots=$(redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null |
    sed -n 's/^cluster_slots_assigned:\([0-9]*\).*/\1/p')
  redis-cli -h 127.0.0.1 -p "$port" cluster nodes 2>/dev/null | awk -v slots="${slots:-0}" '
    $3 ~ /fail|handshake|noaddr/ { next }
    $3 ~ /master/ && NF >= 9 { masters++ }
    $3 ~ /slave/ && $4 != "-" { replicas++ }
    END { print masters + 0, replicas + 0, slots }'
}

redis_cluster_complete() {
  [[ $(redis_cluster_shape "$1") == "$REDIS_CLUSTER_MASTERS $((REDIS_CLUSTER_MASTERS * REDIS_CLUSTER_REPLICAS)) 16384" ]]
}

# True when nothing listens on any of the given ports.
ports_free() {
  local port
  for port in "$@"; do
    if tcp_up "$port"; then return 1; fi
  done
}

start_redis_cluster() {
  local state=$1 home i port dir nodes=() urls=() ports=()
  check_state "$state"
  home=$state/redis-cluster
  local count
  count=$(redis_cluster_size)
  # Two ports a node: clients, and the cluster bus (--cluster-port).
  if [[ -f $home/created && -f $home/ports ]] && read -r -a ports <"$home/ports" &&
    ((${#ports[@]} == 2 * count)) && ports_free "${ports[@]}"; then
    printf '%s\n' "${ports[@]}" >>"$state/run/ports"
  else
    rm -rf -- "$home"
    mkdir -p "$home"
    ports=()
    for ((i = 0; i < 2 * count; i++)); do ports+=("$(free_port "$state")"); done
    printf '%s\n' "${ports[*]}" >"$home/ports"
  fi
  for ((i = 0; i < count; i++)); do
    port=${ports[2 * i]}
    dir=$home/node-$((i + 1))
    mkdir -p "$dir"
    # nodes.conf (the node's view of the cluster) lives in its --dir, beside its data.
    spawn "$state" "redis-cluster-$((i + 1))" TERM 10 redis-server --port "$port" \
      --bind 127.0.0.1 --dir "$dir" --cluster-enabled yes --cluster-port "${ports[2 * i + 1]}" \
      --cluster-config-file nodes.conf --cluster-node-timeout 5000 "${REDIS_PERSISTENCE[@]}"
    nodes+=("127.0.0.1:$port")
    urls+=("redis://127.0.0.1:$port")
  done
  for ((i = 0; i < count; i++)); do
    wait_ready "$state" "redis-cluster-$((i + 1))" redis_ok "${ports[2 * i]}"
  done
  if [[ ! -f $home/created ]]; then
    # The first REDIS_CLUSTER_MASTERS nodes become masters, the others their replicas.
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$REDIS_CLUSTER_REPLICAS" \
      --cluster-yes >>"$state/logs/redis-cluster.log" 2>&1 ||
      { log_tail "$state" redis-cluster; die "redis-cli --cluster create failed"; }
  fi
  for ((i = 0; i < count; i++)); do
    wait_ready "$state" "redis-cluster-$((i + 1))" redis_cluster_ok "${ports[2 * i]}"
  done
  wait_ready "$state" redis-cluster-1 redis_cluster_complete "${ports[0]}"
  touch "$home/created"
  TASKLANE_REDIS_CLUSTER_NODES=$(IFS=,; echo "${urls[*]}")
  export TASKLANE_REDIS_CLUSTER_NODES
}

check_redis_cluster() {
  local first=${TASKLANE_REDIS_CLUSTER_NODES%%,*} masters replicas slots
  read -r masters replicas slots < <(redis_cluster_shape "${first##*:}")
  info "redis cluster: $masters masters, $replicas replicas, $slots slots assigned"
  redis_cluster_complete "${first##*:}"
}
