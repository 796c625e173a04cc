"""The soak run of scripts/soak (SPEC section 9): mixed API traffic while a chaos loop kills
workers with -9, restarts Redis and PostgreSQL, and takes SMTP down for minutes at a time;
then everything is brought back, the queue drains, and what was accepted is reconciled
against what was delivered.

Usage (scripts/soak starts the services and exports their URLs first):
    python3 soak.py STATE MINUTES WORKERS

Every process is started, signalled and restarted by PID; a service is restarted with the
command line, environment, working folder and user it ran with (read from /proc).
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

STATE, MINUTES, WORKERS = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
API = os.environ["API_URL"]
MAIL = os.environ["MAIL_API_URL"]
PASSWORD = "correct horse battery staple"
stop_traffic = threading.Event()
lock = threading.Lock()
log_lines = []


def say(message):
    line = f"[{time.strftime('%H:%M:%S')}] {message}"
    print(line, flush=True)
    with lock:
        log_lines.append(line)


# --- processes ------------------------------------------------------------------------------

def proc_start(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1].split()[19]


def record_pid(name, pid):
    with open(f"{STATE}/run/{name}.pid", "w") as f:
        f.write(f"{pid} {proc_start(pid)}\n")


def pid_of(name):
    with open(f"{STATE}/run/{name}.pid") as f:
        return int(f.read().split()[0])


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


class Service:
    """A running process that can be killed and started again exactly as it was: a service
    through stack.sh's `respawn` (the command `spawn` recorded), a worker with its own
    command and environment."""

    def __init__(self, name, argv=None, env=None):
        self.name, self.argv, self.env = name, argv, env

    def stop(self, sig):
        pid = pid_of(self.name)
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + 30
        while alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)

    def start(self):
        if self.argv is None:
            subprocess.run(["bash", "-c", '. scripts/lib/stack.sh && respawn "$0" "$1"',
                            STATE, self.name], check=True)
            return
        with open(f"{STATE}/logs/{self.name}.log", "a") as log:
            child = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        record_pid(self.name, child.pid)


def wait_port(port, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"port {port} did not come back")


# --- the SMTP gate between the workers and MailDev ------------------------------------------

class SmtpGate:
    """Forwards to MailDev while up; while down, refuses connections and cuts open ones."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.up = True
        self.open = set()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.listener.accept()
            if not self.up:
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            pair = (client, server)
            with lock:
                self.open.add(pair)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self.pipe, args=(a, b, pair), daemon=True).start()

    def pipe(self, src, dst, pair):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with lock:
            self.open.discard(pair)

    def set_up(self, up):
        self.up = up
        if not up:
            with lock:
                pairs = list(self.open)
            for pair in pairs:
                for s in pair:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass


# --- traffic --------------------------------------------------------------------------------

def call(method, path, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(API + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError):
        return 0, None


expected = Counter()  # address -> emails its accepted requests must produce
outcomes = Counter()  # "POST /register 201" -> how many
tasks_created = 0
resets = Counter()  # address -> reset requests sent
RESETS_PER_HOUR = 3  # api/src/routes/auth: the hourly limit of reset emails per account


def traffic(seed):
    global tasks_created
    rng = random.Random(seed)
    mine = []
    while not stop_traffic.is_set():
        choice = rng.random()
        if choice < 0.35 or not mine:
            address = f"soak-{seed}-{rng.getrandbits(48):x}@example.test"
            status, session = call("POST", "/api/v1/auth/register",
                                   {"email": address, "password": PASSWORD})
            with lock:
                outcomes[f"register {status}"] += 1
                if status == 201:
                    expected[address] += 1  # the verification email
            if status == 201 and session:
                mine.append((address, session["access_token"]))
        elif choice < 0.45:
            address, _ = rng.choice(mine)
            # Past the hourly limit the API answers 202 and sends nothing (by design).
            if resets[address] >= RESETS_PER_HOUR:
                continue
            resets[address] += 1
            status, _ = call("POST", "/api/v1/auth/forgot-password", {"email": address})
            with lock:
                outcomes[f"forgot-password {status}"] += 1
                if status in (200, 202, 204):
                    expected[address] += 1  # the reset email
        else:
            _, token = rng.choice(mine)
            status, _ = call("POST", "/api/v1/tasks", {"title": f"soak {rng.random()}"}, token)
            with lock:
                outcomes[f"create task {status}"] += 1
                if status == 201:
                    tasks_created += 1
        time.sleep(rng.uniform(0.02, 0.1))


# --- chaos ----------------------------------------------------------------------------------

def chaos(deadline, gate, workers, redis, postgres):
    rng = random.Random(7)
    while time.time() < deadline:
        time.sleep(rng.uniform(15, 40))
        if time.time() >= deadline:
            break
        fault = rng.choice(["kill worker", "restart redis", "restart postgres", "smtp down"])
        if fault == "kill worker":
            worker = rng.choice(workers)
            say(f"chaos: kill -9 {worker.name}")
            worker.stop(signal.SIGKILL)
            time.sleep(3)
            worker.start()
        elif fault == "restart redis":
            say("chaos: redis killed (-9), back in 5 s")
            redis.stop(signal.SIGKILL)
            time.sleep(5)
            redis.start()
        elif fault == "restart postgres":
            say("chaos: postgres stopped (fast shutdown), back in 10 s")
            postgres.stop(signal.SIGINT)
            time.sleep(10)
            postgres.start()
        else:
            down = rng.uniform(60, 150)
            say(f"chaos: SMTP down for {down:.0f} s")
            gate.set_up(False)
            time.sleep(min(down, max(0, deadline - time.time())))
            gate.set_up(True)
            say("chaos: SMTP back")


# --- the end --------------------------------------------------------------------------------

def psql(sql):
    out = subprocess.run(["psql", os.environ["DATABASE_URL"], "-tAc", sql],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def delivered():
    with urllib.request.urlopen(f"{MAIL}/email", timeout=60) as response:
        mails = json.loads(response.read())
    per_address, message_ids, seen = Counter(), Counter(), {}
    for mail in mails:
        message_id = mail.get("headers", {}).get("message-id", "")
        for to in mail.get("to", []):
            per_address[to["address"].lower()] += 1
            seen.setdefault(to["address"].lower(), set()).add(message_id)
        message_ids[message_id] += 1
    distinct = Counter({address: len(ids) for address, ids in seen.items()})
    return per_address, message_ids, distinct


def main():
    gate = SmtpGate(int(os.environ["SMTP_URL"].rsplit(":", 1)[1]))
    say(f"SMTP gate on 127.0.0.1:{gate.port} in front of MailDev")
    api = subprocess.Popen(["target/debug/tasklane-api"], env=os.environ,
                           stdout=open(f"{STATE}/logs/api.log", "a"), stderr=subprocess.STDOUT,
                           start_new_session=True)
    record_pid("api", api.pid)
    env = dict(os.environ, SMTP_URL=f"smtp://127.0.0.1:{gate.port}",
               TASKLANE_WORKER_ADDR="127.0.0.1:0")
    workers = [Service(f"worker{i}", ["target/debug/tasklane-worker"], env)
               for i in range(WORKERS)]
    for worker in workers:
        worker.start()
    redis, postgres = Service("redis"), Service("postgres")
    wait_port(int(os.environ["TASKLANE_API_ADDR"].rsplit(":", 1)[1]))

    say(f"soak: {MINUTES:g} min of traffic and chaos, {WORKERS} workers")
    deadline = time.time() + MINUTES * 60
    threads = [threading.Thread(target=traffic, args=(seed,), daemon=True) for seed in range(4)]
    for thread in threads:
        thread.start()
    chaos(deadline, gate, workers, redis, postgres)
    stop_traffic.set()
    for thread in threads:
        thread.join()
    gate.set_up(True)
    for service in [redis, postgres, *workers]:
        if not alive(pid_of(service.name)):
            say(f"bringing {service.name} back")
            service.start()

    say("traffic stopped; waiting for the queue to drain (at most 15 min)")
    end = time.time() + 900
    while time.time() < end:
        try:
            open_records = int(psql("select count(*) from outbox where finished_at is null"))
        except subprocess.CalledProcessError:
            open_records = -1
        if open_records == 0:
            break
        time.sleep(2)
    time.sleep(3)  # outcomes on their way to MailDev's API

    accepted = int(psql("select count(*) from outbox where queue <> 'events'"))
    finished = Counter(dict(
        line.split("|") for line in psql(
            "select coalesce(outcome, 'unfinished'), count(*) from outbox "
            "where queue <> 'events' group by 1").splitlines() if line))
    stored_tasks = int(psql("select count(*) from tasks"))
    per_address, message_ids, distinct = delivered()
    want = sum(expected.values())
    lost = sum(max(0, n - per_address.get(a, 0)) for a, n in expected.items())
    duplicated = sum(max(0, per_address.get(a, 0) - n) for a, n in expected.items())
    # A resend after an ambiguous SMTP failure (cut after DATA, a worker killed between the
    # server's 250 and the commit) carries the same Message-ID: recognisably the same email
    # (SPEC section 9). Two different emails for one request would be a real duplicate.
    resent = sum(n - 1 for n in message_ids.values() if n > 1)
    twice = sum(max(0, distinct.get(a, 0) - n) for a, n in expected.items())
    print()
    print("== soak result ==")
    print("requests:", dict(sorted(outcomes.items())))
    print(f"tasks: {tasks_created} created (201), {stored_tasks} stored")
    print(f"jobs accepted (records): {accepted}; by outcome: {dict(finished)}")
    print(f"emails: {want} owed to accepted requests, {sum(per_address.values())} delivered")
    print(f"accepted {want}, finished {want - lost}, lost {lost}, duplicated {duplicated}"
          f" (of which resends with the same Message-ID: {resent}; different emails for"
          f" one request: {twice})")
    ok = lost == 0 and twice == 0 and finished.get("unfinished", 0) == 0 \
        and stored_tasks == tasks_created
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
