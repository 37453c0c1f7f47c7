#!/usr/bin/env python3
"""What a registrar lookup that misses in memory costs (README: Scaling out).

Starts a private redis-server and two backend nodes (scripts/proxy.py, Redis
registrar, instances b1 and b2), registers USERS subscribers on b1 whose
contact is a UDP socket here, then INVITEs each subscriber once through b1
(found in memory) and once through b2 (read from Redis), and prints the time
from sending the INVITE to the contact receiving it, median and p90, for
both. The contact answers 486, so each call ends at once.

  bench/lookup_miss.py [--siphon target/release/siphon] [--users 200]
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    sys.exit(f"lookup_miss: {what} did not happen within {seconds} s")


def start_node(siphon, work, instance, redis_port):
    port = free_port()
    directory = os.path.join(work, instance)
    os.makedirs(directory)
    shutil.copy(os.path.join(ROOT, "scripts", "proxy.py"), directory)
    with open(os.path.join(directory, "siphon.yaml"), "w") as f:
        f.write(
            f"""listen: {{udp: ["127.0.0.1:{port}"]}}
domain: {{local: ["127.0.0.1"]}}
script: {{path: proxy.py}}
registrar:
  backend: redis
  redis: {{url: "redis://127.0.0.1:{redis_port}"}}
server: {{instance_id: {instance}}}
log: {{level: warn}}
"""
        )
    log = open(os.path.join(directory, "siphon.log"), "w")
    process = subprocess.Popen(
        [siphon, "--config", "siphon.yaml"], cwd=directory, stdout=log, stderr=log
    )
    return process, port


def request(method, user, node_port, local_port, extra=""):
    branch = "z9hG4bK" + uuid.uuid4().hex
    return (
        f"{method} sip:{user}@127.0.0.1:{node_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local_port};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:caller@127.0.0.1>;tag={uuid.uuid4().hex[:8]}\r\n"
        f"To: <sip:{user}@127.0.0.1>\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def answer(contact, data, source, code, reason):
    """Replies to the request in DATA (from SOURCE) with CODE."""
    text = data.decode(errors="replace")
    head = text.split("\r\n\r\n", 1)[0].split("\r\n")
    keep = [h for h in head[1:] if h.split(":", 1)[0].lower() in ("via", "from", "call-id", "cseq", "to")]
    keep = [h + ";tag=callee" if h.lower().startswith("to:") else h for h in keep]
    reply = f"SIP/2.0 {code} {reason}\r\n" + "\r\n".join(keep) + "\r\nContent-Length: 0\r\n\r\n"
    contact.sendto(reply.encode(), source)


def time_invite(caller, contact, user, node_port):
    caller.sendto(request("INVITE", user, node_port, caller.getsockname()[1]), ("127.0.0.1", node_port))
    sent = time.perf_counter()
    while True:
        data, source = contact.recvfrom(65535)
        if data.startswith(b"INVITE"):
            took = time.perf_counter() - sent
            answer(contact, data, source, 486, "Busy Here")
            return took


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--siphon", default=os.path.join(ROOT, "target", "release", "siphon"))
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="siphon-lookup-")
    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--dir", work],
        stdout=subprocess.DEVNULL,
    )
    processes = [redis]
    try:
        def redis_up():
            try:
                socket.create_connection(("127.0.0.1", redis_port)).close()
                return True
            except OSError:
                return False

        wait_for(redis_up, 5, "redis-server start")
        b1, b1_port = start_node(args.siphon, work, "b1", redis_port)
        b2, b2_port = start_node(args.siphon, work, "b2", redis_port)
        processes += [b1, b2]
        time.sleep(1.0)
        contact = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        contact.bind(("127.0.0.1", 0))
        contact.settimeout(5)
        caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        caller.bind(("127.0.0.1", 0))
        caller.settimeout(5)
        users = [f"u{n}" for n in range(args.users)]
        for user in users:
            extra = f"Contact: <sip:{user}@127.0.0.1:{contact.getsockname()[1]}>\r\nExpires: 600\r\n"
            caller.sendto(request("REGISTER", user, b1_port, caller.getsockname()[1], extra), ("127.0.0.1", b1_port))
            reply, _ = caller.recvfrom(65535)
            if not reply.startswith(b"SIP/2.0 200"):
                sys.exit(f"lookup_miss: REGISTER {user}: {reply[:80]!r}")
        time.sleep(1.0)  # the write-through reaches Redis
        local = [time_invite(caller, contact, user, b1_port) for user in users]
        miss = [time_invite(caller, contact, user, b2_port) for user in users]
        cached = [time_invite(caller, contact, user, b2_port) for user in users[-20:]]

        def show(name, samples):
            ms = sorted(s * 1000 for s in samples)
            p90 = ms[int(len(ms) * 0.9) - 1]
            print(f"{name:<34} median {statistics.median(ms):6.3f} ms   p90 {p90:6.3f} ms   ({len(ms)} calls)")

        show("INVITE found in memory (b1)", local)
        show("INVITE read from Redis (b2)", miss)
        show("INVITE again within 1 s (b2)", cached)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
