# shellcheck shell=bash
#
# Helpers shared by scripts/dev and scripts/test (sourced, never executed).
#
# They install the four backing services when missing (PostgreSQL, Redis, MailDev,
# s3s-fs; and Prometheus, for promtool and TASKLANE_OBSERVE), start each one on a free 127.0.0.1 port under a state folder, export the
# connection settings under the names the README lists, and stop everything by PID.
#
# State folder layout (every start_* function takes it as first argument):
#   logs/<name>.log   output of each process
#   run/<name>.pid    "<pid> <start time>" of each process we started
#   run/order         one "<name> <signal> <grace seconds>" line per process, in start order
#   run/ports         ports handed out by free_port, so two services never get the same one
#   pg/ s3/ mail/     service data
#
# Callers run with `set -euo pipefail`.

TASKLANE_TOOLS_DIR=${TASKLANE_TOOLS_DIR:-$HOME/.cache/tasklane}
MAILDEV_VERSION=2.2.1    # 3.x does not start here
S3S_FS_VERSION=0.14.1
PROMETHEUS_DEB_VERSION=2.42.0+ds-5+b6 # Debian's prometheus: promtool and Prometheus itself
# Debian's chromium, for the console's browser test. Not pinned to an exact version: Debian
# ships Chromium through security updates only and drops each superseded .deb from the
# archive within weeks, so an exact pin would stop installing. The floor keeps a too-old
# browser (for the pinned playwright-core in testkit/e2e) from running the test.
CHROMIUM_MIN_MAJOR=147
# How long a service may take to answer before we give up and show its log.
READY_TIMEOUT=${TASKLANE_READY_TIMEOUT:-60}

info() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------

# Newest PostgreSQL server binaries installed by Debian's postgresql package.
pg_bin_dir() {
  local dir
  dir=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  if [[ -n $dir && -x $dir/initdb ]]; then printf '%s\n' "$dir"; fi
}

# Debian's libfaketime (package faketime), preloaded into a process to skew its clock.
libfaketime_path() {
  local lib
  for lib in /usr/lib/*/faketime/libfaketime.so.1; do
    if [[ -f $lib ]]; then
      printf '%s\n' "$lib"
      return
    fi
  done
}

maildev_bin() { printf '%s\n' "$TASKLANE_TOOLS_DIR/maildev/node_modules/.bin/maildev"; }
s3s_fs_bin() { printf '%s\n' "$TASKLANE_TOOLS_DIR/s3s-fs/bin/s3s-fs"; }

# apt needs root; use sudo when we are not.
as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

apt_install() {
  info "installing with apt: $*"
  export DEBIAN_FRONTEND=noninteractive
  # A fresh machine often has no package lists yet; only then pay for an update.
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
    { as_root apt-get update -qq && as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

maildev_installed() {
  local pkg=$TASKLANE_TOOLS_DIR/maildev/node_modules/maildev/package.json
  [[ -x $(maildev_bin) && -f $pkg ]] &&
    grep -q "\"version\": \"$MAILDEV_VERSION\"" "$pkg"
}

# Install whatever is missing; silent when everything is already there.
# apt packages go system-wide, MailDev and s3s-fs into the tools cache outside the clone,
# so a fresh clone (or a second one) never rebuilds them.
ensure_tools() {
  local lock pkgs=()
  mkdir -p "$TASKLANE_TOOLS_DIR"
  # scripts/dev and scripts/test may run at the same time on a cold machine:
  # let only one of them install.
  exec {lock}>"$TASKLANE_TOOLS_DIR/.install.lock"
  flock "$lock"

  [[ -n $(pg_bin_dir) ]] || pkgs+=(postgresql)
  command -v redis-server >/dev/null || pkgs+=(redis-server)
  command -v curl >/dev/null || pkgs+=(curl)
  command -v promtool >/dev/null || pkgs+=("prometheus=$PROMETHEUS_DEB_VERSION")
  # libfaketime: test F8 runs a worker process with its clock 10 minutes off.
  [[ -n $(libfaketime_path) ]] || pkgs+=(faketime)
  # Chromium: the operator console's end-to-end test (testkit/tests/console.rs).
  command -v chromium >/dev/null || pkgs+=(chromium)
  if ((${#pkgs[@]})); then apt_install "${pkgs[@]}"; fi
  [[ -n $(pg_bin_dir) ]] || die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found"
  check_chromium

  if ! maildev_installed; then
    command -v npm >/dev/null || die "npm is needed to install MailDev (install Node.js)"
    info "installing MailDev $MAILDEV_VERSION into $TASKLANE_TOOLS_DIR/maildev"
    npm install --prefix "$TASKLANE_TOOLS_DIR/maildev" --no-audit --no-fund --loglevel=error \
      --save-exact "maildev@$MAILDEV_VERSION" >/dev/null
  fi

  if [[ ! -x $(s3s_fs_bin) ]]; then
    info "building s3s-fs $S3S_FS_VERSION into $TASKLANE_TOOLS_DIR/s3s-fs (once, ~3 min)"
    cargo install "s3s-fs@$S3S_FS_VERSION" --features binary --locked --quiet \
      --root "$TASKLANE_TOOLS_DIR/s3s-fs"
  fi

  flock -u "$lock"
  exec {lock}>&-
}

# Debian's Chromium, at least CHROMIUM_MIN_MAJOR (see there why not an exact version).
check_chromium() {
  local version major
  version=$(chromium --version 2>/dev/null | grep -oE '[0-9]+(\.[0-9]+)+' | head -n 1)
  major=${version%%.*}
  [[ -n $major ]] || die "chromium installed but \`chromium --version\` says no version"
  ((major >= CHROMIUM_MIN_MAJOR)) ||
    die "chromium $version is older than $CHROMIUM_MIN_MAJOR: apt-get update && apt-get install chromium"
}

# The console's browser test (testkit/e2e): playwright-core exactly as its lockfile says,
# never a downloaded browser (it drives /usr/bin/chromium). `npm ci` only when the
# installed tree is not the lockfile's.
ensure_console_e2e() {
  local dir=$1/testkit/e2e
  command -v node >/dev/null || die "Node.js is needed for the console's browser test"
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.ci" 2>/dev/null ||
    [[ ! -f $dir/node_modules/playwright-core/package.json ]]; then
    info "installing the console test's npm packages (npm ci in testkit/e2e)"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >/dev/null
    cp "$dir/package-lock.json" "$dir/node_modules/.package-lock.json.ci"
  fi
}

# ensure_venv VENV TOOL PIP_ARGS...: a Python venv at VENV (in the tools cache, shared by
# every clone) with PIP_ARGS installed, unless VENV/bin/TOOL is already there. One installer
# at a time; a failed install leaves no half venv behind.
ensure_venv() {
  local venv=$1 tool=$2 lock
  shift 2
  [[ -x $venv/bin/$tool ]] && return 0
  mkdir -p "$TASKLANE_TOOLS_DIR"
  exec {lock}>"$TASKLANE_TOOLS_DIR/.install.lock"
  flock "$lock"
  if [[ ! -x $venv/bin/$tool ]]; then
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    info "installing $* into $venv"
    rm -rf -- "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" ||
      { rm -rf -- "$venv"; die "pip install $* failed"; }
  fi
  flock -u "$lock"
  exec {lock}>&-
}

# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------

# A free TCP port on 127.0.0.1, never one already handed out for this state folder.
free_port() {
  local state=$1
  mkdir -p "$state/run"
  python3 - "$state/run/ports" <<'PY'
import os, socket, sys
path = sys.argv[1]
used = set(open(path).read().split()) if os.path.exists(path) else set()
for _ in range(100):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    if port not in used:
        break
with open(path, "a") as f:
    f.write(port + "\n")
print(port)
PY
}

# Kernel start time of a process (field 22 of /proc/PID/stat). Stored next to each PID
# so we never signal an unrelated process that later got the same PID.
proc_start() {
  local stat fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) } # the command name may contain spaces: skip past it
  read -r -a fields <<<"$stat"
  printf '%s\n' "${fields[19]}"
}

# True while PID runs and is the process we recorded (zombies count as gone).
proc_alive() {
  local pid=$1 started=${2:-} stat
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]] || return 1
  [[ -z $started || $(proc_start "$pid") == "$started" ]]
}

# register STATE NAME PID SIGNAL GRACE: remember a process so stop_all can stop it.
register() {
  local state=$1 name=$2 pid=$3 sig=$4 grace=$5
  mkdir -p "$state/run"
  printf '%s %s\n' "$pid" "$(proc_start "$pid" || echo 0)" >"$state/run/$name.pid"
  printf '%s %s %s\n' "$name" "$sig" "$grace" >>"$state/run/order"
}

# PID of a registered process (empty if unknown).
pid_of() {
  local pid
  [[ -f $1/run/$2.pid ]] && read -r pid _ <"$1/run/$2.pid" && printf '%s\n' "$pid"
}

# spawn STATE NAME SIGNAL GRACE CMD...: run CMD in the background, output to logs/NAME.log.
# setsid puts it in its own session, so a Ctrl-C in the terminal reaches only the script,
# which then stops everything in order (workers must still reach Redis while they hand
# back their jobs). A non-interactive shell's background child is not a group leader, so
# setsid execs in place and $! is the service's own PID. fd 9 is scripts/dev's lock:
# children must not hold it. The command and its working folder are kept in run/NAME.cmd,
# so respawn can start the same process again (same port, same data).
spawn() {
  local state=$1 name=$2 sig=$3 grace=$4
  shift 4
  local cmd=("$@") dir=$PWD
  mkdir -p "$state/logs" "$state/run"
  {
    declare -p cmd
    declare -p dir
  } >"$state/run/$name.cmd"
  launch "$state" "$name" "$@"
  register "$state" "$name" "$!" "$sig" "$grace"
}

launch() {
  local state=$1 name=$2
  shift 2
  printf '\n--- %s: %s\n' "$(date -Is)" "$*" >>"$state/logs/$name.log"
  setsid "$@" >>"$state/logs/$name.log" 2>&1 </dev/null 9>&- &
}

# respawn STATE NAME: start a process spawn started (and which has stopped) again, with the
# same command in the same folder; it keeps its place in the stop order (pid_of gives its
# new PID). Not in a subshell: the process must be this shell's child.
respawn() {
  local state=$1 name=$2 here=$PWD cmd=() dir=
  # shellcheck source=/dev/null # written by spawn: `declare -a cmd=(...)`, `declare -- dir=...`
  . "$state/run/$name.cmd"
  cd "$dir" || return 1
  launch "$state" "$name" "${cmd[@]}"
  printf '%s %s\n' "$!" "$(proc_start "$!" || echo 0)" >"$state/run/$name.pid"
  cd "$here" || return 1
}

# run_job CMD...: run a long command (cargo) in the foreground in a way that lets the
# script's traps fire at once: bash runs a trap only after the current command ends, but
# an interrupted `wait` returns immediately. The job gets its own process group, so
# stop_job ends it together with its children (rustc, test binaries).
JOB_PID=
run_job() {
  local status=0
  setsid "$@" </dev/null 9>&- &
  JOB_PID=$!
  wait "$JOB_PID" || status=$?
  JOB_PID=
  return "$status"
}

stop_job() {
  [[ -n $JOB_PID ]] || return 0
  kill -s TERM -- "-$JOB_PID" 2>/dev/null || true
  wait "$JOB_PID" 2>/dev/null || true
  JOB_PID=
}

log_tail() {
  local log=$1/logs/$2.log
  if [[ -f $log ]]; then
    printf -- '--- last lines of %s:\n' "$log" >&2
    tail -n 40 "$log" >&2
  fi
}

# wait_ready STATE NAME CHECK...: poll CHECK until it succeeds. Fails (with the log tail)
# when the deadline passes or the process exits first.
wait_ready() {
  local state=$1 name=$2 pid
  shift 2
  local deadline=$((SECONDS + READY_TIMEOUT))
  pid=$(pid_of "$state" "$name" || true)
  until "$@" >/dev/null 2>&1; do
    if [[ -n $pid ]] && ! proc_alive "$pid"; then
      log_tail "$state" "$name"
      die "$name exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
      log_tail "$state" "$name"
      die "$name not ready after ${READY_TIMEOUT}s"
    fi
    sleep 0.2
  done
}

# Readiness probes. http_ok wants a 2xx; tcp_up only a listening port.
http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }
tcp_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
redis_ok() { [[ $(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null) == PONG ]]; }

# stop_one STATE NAME SIGNAL GRACE: signal, wait up to GRACE seconds, then SIGKILL.
stop_one() {
  local state=$1 name=$2 sig=$3 grace=$4 pid started deadline
  [[ -f $state/run/$name.pid ]] || return 0
  read -r pid started <"$state/run/$name.pid"
  if proc_alive "$pid" "$started"; then
    kill -s "$sig" "$pid" 2>/dev/null || true
    deadline=$((SECONDS + grace))
    while proc_alive "$pid" "$started" && ((SECONDS < deadline)); do sleep 0.1; done
    if proc_alive "$pid" "$started"; then
      info "$name (pid $pid) still running after ${grace}s: SIGKILL"
      kill -s KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 5))
      while proc_alive "$pid" "$started" && ((SECONDS < deadline)); do sleep 0.1; done
    fi
  fi
  wait "$pid" 2>/dev/null || true # reap it if it is our child
  rm -f "$state/run/$name.pid"
}

# Stop everything registered in STATE, newest first: apps before the services they use.
# Keeps all data; only the PID bookkeeping goes.
stop_all() {
  local state=$1 name sig grace
  [[ -f $state/run/order ]] || return 0
  while read -r name sig grace; do
    stop_one "$state" "$name" "$sig" "$grace"
  done < <(tac "$state/run/order")
  rm -f "$state/run/order" "$state/run/ports"
}

# Remove a throwaway state folder, including PostgreSQL data kept outside it (see pg_dir).
remove_state() {
  local state=$1 target
  if [[ -L $state/pg ]]; then
    target=$(readlink -f "$state/pg")
    [[ $target == /tmp/tasklane-pg.* ]] && rm -rf -- "$target"
  fi
  rm -rf -- "$state"
}

# ---------------------------------------------------------------------------------------
# Services. Each: start_x STATE; exports the contract's variables for that service.
# STATE must be an absolute path (it ends up in symlinks and in processes' arguments).
# ---------------------------------------------------------------------------------------

check_state() {
  [[ $1 == /* && -d $1 ]] || die "state folder must be an existing absolute path: $1"
  mkdir -p "$1/logs" "$1/run"
}

# initdb and postgres refuse to run as root: as root, run them as the `postgres` user.
# setpriv execs in place (no fork), so the server keeps the PID that spawn records.
AS_PG=()
if ((EUID == 0)); then AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi
as_pg() { "${AS_PG[@]}" "$@"; }

# Data folder for PostgreSQL. As root it must belong to `postgres`, and that user must be
# able to reach it: if the state folder is not reachable (e.g. a clone under /root, or a
# 0700 mktemp folder), keep the data in /tmp and link it from STATE/pg.
pg_dir() {
  local state=$1 dir
  if [[ -L $state/pg && -d $state/pg ]]; then
    readlink -f "$state/pg"
    return
  fi
  rm -f "$state/pg" # a dangling link (e.g. /tmp was wiped): start over
  if ((EUID != 0)) || (cd / && as_pg test -x "$state" -a -r "$state"); then
    dir=$state/pg
    mkdir -p "$dir"
  else
    dir=$(mktemp -d /tmp/tasklane-pg.XXXXXX)
    ln -s "$dir" "$state/pg"
  fi
  if ((EUID == 0)); then chown postgres:postgres "$dir"; fi
  chmod 0700 "$dir"
  printf '%s\n' "$dir"
}

# start_postgres STATE [postgres -c options...]: initdb once, start, create `tasklane`.
start_postgres() {
  local state=$1 bin dir port sock locale=C
  check_state "$state"
  shift
  bin=$(pg_bin_dir)
  dir=$(pg_dir "$state")
  port=$(free_port "$state")

  if [[ ! -f $dir/PG_VERSION ]]; then
    locale -a 2>/dev/null | grep -qix 'c.utf-\?8' && locale=C.UTF-8
    # From / : initdb as postgres cannot chdir back into root's working directory.
    (cd / && as_pg "$bin/initdb" -D "$dir" -A trust --no-sync -U postgres -E UTF8 \
      --locale="$locale") >>"$state/logs/postgres.log" 2>&1 ||
      { log_tail "$state" postgres; die "initdb failed"; }
  fi

  # The socket lives in the data folder; Unix socket paths are limited to ~107 bytes,
  # and clients use TCP anyway, so drop the socket when the path is too long.
  sock=$dir
  ((${#sock} < 90)) || sock=''
  # Started from / like initdb, but not in a subshell: the server must stay a child of
  # this shell so scripts/dev can notice when it dies.
  local here=$PWD
  cd /
  spawn "$state" postgres INT 30 "${AS_PG[@]}" "$bin/postgres" -D "$dir" -p "$port" -k "$sock" \
    -c listen_addresses=127.0.0.1 -c fsync=off "$@"
  cd "$here" || die "cannot return to $here"
  wait_ready "$state" postgres "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres

  if [[ -z $("$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'tasklane'") ]]; then
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres tasklane
  fi
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/tasklane"
}

# The production settings: every write in the append-only file, fsynced each second (a
# crash of the machine loses at most the last second, a crash of Redis nothing), RDB
# snapshots as a second copy, and writes refused rather than keys evicted when full.
# testkit's TestRedis uses the same (testkit/src/faults.rs).
REDIS_PERSISTENCE=(--appendonly yes --appendfsync everysec --save '3600 1 300 100 60 10000'
  --maxmemory-policy noeviction)

start_redis() {
  local state=$1 port
  check_state "$state"
  port=$(free_port "$state")
  mkdir -p "$state/redis"
  # Production persistence (README "Redis in production"), so dev and tests see what a
  # restart really keeps. Its data stays in STATE/redis from one run to the next.
  spawn "$state" redis TERM 10 redis-server --port "$port" --bind 127.0.0.1 \
    --dir "$state/redis" "${REDIS_PERSISTENCE[@]}"
  wait_ready "$state" redis redis_ok "$port"
  export REDIS_URL="redis://127.0.0.1:$port"
}

start_maildev() {
  local state=$1 smtp web
  check_state "$state"
  smtp=$(free_port "$state")
  web=$(free_port "$state")
  mkdir -p "$state/mail"
  spawn "$state" maildev TERM 10 "$(maildev_bin)" --ip 127.0.0.1 --web-ip 127.0.0.1 \
    -s "$smtp" -w "$web" --mail-directory "$state/mail"
  wait_ready "$state" maildev http_ok "http://127.0.0.1:$web/email"
  export SMTP_URL="smtp://127.0.0.1:$smtp"
  export MAIL_API_URL="http://127.0.0.1:$web"
}

# s3s-fs serves every folder under its root as a bucket (path-style URLs only).
start_s3() {
  local state=$1 port
  check_state "$state"
  port=$(free_port "$state")
  export S3_BUCKET=${S3_BUCKET:-tasklane}
  export AWS_REGION=${AWS_REGION:-us-east-1}
  export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-tasklane-dev}
  export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-tasklane-dev-secret}
  mkdir -p "$state/s3/$S3_BUCKET"
  spawn "$state" s3 TERM 10 "$(s3s_fs_bin)" --host 127.0.0.1 --port "$port" \
    --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$state/s3"
  # TCP, not HTTP: an unsigned probe request would be logged by s3s-fs as an error.
  wait_ready "$state" s3 tcp_up "$port"
  export S3_ENDPOINT="http://127.0.0.1:$port"
  export S3_PUBLIC_ENDPOINT=${S3_PUBLIC_ENDPOINT:-$S3_ENDPOINT}
}

# A local Redis Cluster: start_redis_cluster, check_redis_cluster (TASKLANE_REDIS=cluster).
# shellcheck source-path=SCRIPTDIR source=redis_cluster.sh
. "$(dirname "${BASH_SOURCE[0]}")/redis_cluster.sh"
