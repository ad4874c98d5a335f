#!/usr/bin/env python3
"""A replica group of four `metatopia up` processes on loopback, measured.

Usage: python3 node/benches/group_latency.py [BINARY] [INPUTS] [KILLS] [ELEMENTS]
(defaults: target/release/metatopia, 300 inputs, 10 kills, 10000 elements).

1. Input to acknowledged: one client sends INPUTS chat lines, one after the
   other, to member 1 over HTTP; the 200 comes when the group has
   finalized the input's tick. Prints p50/p99 in ms and in ticks (50 ms).
2. Failover: a client keeps sending to a surviving member while the
   primary (as the members' status names it) is killed with SIGKILL, KILLS
   times, restarting it after; the longest gap between two
   acknowledgements around each kill is the time the group needed to
   finalize again under a new primary.
3. Observer late join: ELEMENTS objects are created (32 clients across
   the four members), then `metatopia join --via` a member starts; the
   time from its start to "listening on" (it has adopted a snapshot f + 1
   members vouch for and caught up to a finalized head) and to a tick
   within 5 of the group's is printed, with the snapshot's size.
Everything runs on 127.0.0.1; the data directories are temporary.

NEIGHBOUR=1 in the environment: the group hosts region 1 beside a
neighbour, region 2, hosted by a second group of four that runs
throughout (`group init --regions 2`); the group measured waits for the
neighbour's border sets and its engine timeouts grow by the longer
border wait (ADR 0013 decisions 6 and 9).
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/metatopia"
INPUTS = int(sys.argv[2]) if len(sys.argv) > 2 else 300
KILLS = int(sys.argv[3]) if len(sys.argv) > 3 else 10
ELEMENTS = int(sys.argv[4]) if len(sys.argv) > 4 else 10000


def free_base(n):
    for base in range(31000, 60000, 7):
        try:
            socks = []
            for i in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
            for s in socks:
                s.close()
            return base
        except OSError:
            for s in socks:
                s.close()
    raise SystemExit("no free ports")


def start(data, args=("up",)):
    p = subprocess.Popen([BIN, *args, "--data", data], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if line.startswith("metatopia: listening on "):
            base = line.split("listening on ", 1)[1].strip()
            threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
            return p, base.replace("http://", "")
    raise SystemExit(f"{data}: node did not start")


def say(addr, token, text, conn_cache={}, action=None):
    conn = conn_cache.get(addr)
    if conn is None:
        host, port = addr.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn_cache[addr] = conn
    body = json.dumps(action or {"do": "say", "text": text})
    try:
        conn.request("POST", "/api/regions/1/inputs", body,
                     {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        return r.status
    except (OSError, http.client.HTTPException):
        conn_cache.pop(addr, None)
        return None


def get_status(addr):
    host, port = addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/api/status")
    return json.loads(conn.getresponse().read())


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(round((len(v) - 1) * q)))]


def main():
    tmp = tempfile.mkdtemp(prefix="metatopia-group-")
    neighbour = os.environ.get("NEIGHBOUR") == "1"
    http_base, p2p_base = free_base(8), free_base(8) + 100
    subprocess.run([BIN, "group", "init", "--dir", tmp, "--members", "4",
                    *(["--regions", "2"] if neighbour else []),
                    "--port", str(p2p_base), "--http-port", str(http_base)],
                   check=True, stdout=subprocess.DEVNULL)
    region = os.path.join(tmp, "r0") if neighbour else tmp
    dirs = [os.path.join(region, f"m{i}") for i in range(4)]
    nodes = []
    nodes.extend(start(d) for d in dirs)
    STARTED.extend(nodes)
    if neighbour:
        STARTED.extend(start(os.path.join(tmp, "r1", f"m{i}")) for i in range(4))
    tokens = [open(os.path.join(d, "token")).read().strip() for d in dirs]
    addrs = [n[1] for n in nodes]
    # Each member's player joins first.
    for i in range(4):
        say(addrs[i], tokens[i], "", action={"do": "join", "name": f"p{i}"})
    lat = []
    for k in range(INPUTS):
        t0 = time.perf_counter()
        status = say(addrs[1], tokens[1], f"line {k}")
        if status == 200:
            lat.append((time.perf_counter() - t0) * 1000)
    print(f"input to acknowledged (finalized), {len(lat)} inputs, one client, 4 members:")
    print(f"  p50 {pct(lat, 0.5):.1f} ms ({pct(lat, 0.5) / 50:.2f} ticks), "
          f"p99 {pct(lat, 0.99):.1f} ms ({pct(lat, 0.99) / 50:.2f} ticks)")

    keys = [get_status(a)["group"]["me"] for a in addrs]
    gaps = []
    for k in range(KILLS):
        primary = None
        for _ in range(50):
            primary = get_status(addrs[(k + 1) % 4])["group"].get("primary")
            if primary in keys:
                break
            time.sleep(0.1)
        victim = keys.index(primary)
        client = (victim + 1) % 4
        stop = threading.Event()
        acks = []

        def send():
            n = 0
            while not stop.is_set():
                if say(addrs[client], tokens[client], f"k{k} {n}") == 200:
                    acks.append(time.perf_counter())
                n += 1

        t = threading.Thread(target=send)
        t.start()
        time.sleep(1.0)
        killed_at = time.perf_counter()
        nodes[victim][0].send_signal(signal.SIGKILL)
        nodes[victim][0].wait()
        time.sleep(2.0)
        stop.set()
        t.join()
        around = [a for a in acks if a > killed_at - 0.5]
        gap = max((b - a for a, b in zip(around, around[1:])), default=float("nan")) * 1000
        after = next((a for a in acks if a > killed_at), None)
        first = (after - killed_at) * 1000 if after else float("nan")
        gaps.append(gap)
        print(f"kill -9 member {victim} (the primary): longest gap between acks {gap:.0f} ms, "
              f"first ack after the kill {first:.0f} ms")
        nodes[victim] = start(dirs[victim])
        STARTED.append(nodes[victim])
        addrs[victim] = nodes[victim][1]
        # Caught up (within a few ticks of a survivor) before the next kill.
        for _ in range(200):
            if get_status(addrs[victim])["tick"] + 5 >= get_status(addrs[client])["tick"]:
                break
            time.sleep(0.1)
        time.sleep(1.0)
    if gaps:
        print(f"failover after killing the primary: median longest gap {pct(gaps, 0.5):.0f} ms, max {max(gaps):.0f} ms "
              f"over {len(gaps)} kills")
    if ELEMENTS:
        late_join(tmp, addrs, tokens)
    for p, _ in STARTED:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()


def late_join(tmp, addrs, tokens):
    """Phase 3: ELEMENTS objects, then an observer joins late."""
    t0 = time.perf_counter()
    created = [0]
    lock = threading.Lock()
    next_i = [0]

    def creator(member):
        cache = {}
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= ELEMENTS:
                return
            action = {"do": "create", "name": f"e{i}",
                      "pos": f"{i % 200 + 20},{(i // 200) % 200 + 20},1"}
            if say(addrs[member], tokens[member], "", conn_cache=cache, action=action) == 200:
                with lock:
                    created[0] += 1

    threads = [threading.Thread(target=creator, args=(k % 4,)) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    print(f"created {created[0]} of {ELEMENTS} objects in {took:.1f} s "
          f"({created[0] / took:.0f} acknowledged inputs/s, 32 clients, one input per request)")
    status = get_status(addrs[0])
    print(f"  the group at tick {status['tick']}, {status['regions'][0]['elements']} elements")
    data = os.path.join(tmp, "observer")
    http_port = free_base(1)
    started = time.perf_counter()
    node = start(data, ("join", "--via", f"http://{addrs[0]}", "--http", f"127.0.0.1:{http_port}"))
    STARTED.append(node)
    listening = time.perf_counter() - started
    caught = float("nan")
    for _ in range(600):
        mine, theirs = get_status(node[1]), get_status(addrs[0])
        if mine["tick"] + 5 >= theirs["tick"]:
            caught = time.perf_counter() - started
            break
        time.sleep(0.05)
    mine = get_status(node[1])
    theirs = get_status(addrs[0])
    print(f"observer late join with {mine['regions'][0]['elements']} elements "
          f"(the group: {theirs['regions'][0]['elements']}): "
          f"listening after {listening * 1000:.0f} ms, within 5 ticks of the group after {caught * 1000:.0f} ms")


# Every node this script started, killed on the way out even when the
# script fails (a crash must not leave a group running).
STARTED = []

if __name__ == "__main__":
    try:
        main()
    finally:
        for p, _ in STARTED:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
