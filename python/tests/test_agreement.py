"""The harness and a running daemon pick the same backend, over four
weighted destinations and the seed's lb.py: 10,000 random keys through the
harness against the daemon's own ranking (`GET
/admin/gateways/backends/select`), and 500 of them as real INVITEs that the
daemon relays to four UDP backends."""

import http.client
import json
import os
import random
import socket
import select
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Iterator

import pytest

from siphon.testing import Harness, find_siphon

REPO = Path(__file__).resolve().parents[2]
KEYS = 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RELAYED = 500
WEIGHTS = [1, 2, 3, 1]


class Backends:
    """Four UDP backends that answer every INVITE 486 (a final answer that
    neither fails over nor counts against their health) and note which
    Call-ID reached which of them."""

    def __init__(self) -> None:
        self.sockets = []
        for _ in WEIGHTS:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            self.sockets.append(sock)
        self.ports = [int(s.getsockname()[1]) for s in self.sockets]
        self.reached: dict[str, str] = {}
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop:
            ready, _, _ = select.select(self.sockets, [], [], 0.1)
            for sock in ready:
                data, peer = sock.recvfrom(65535)
                head = data.decode("utf-8", "replace").split("\r\n\r\n")[0].split("\r\n")
                if not head[0].startswith("INVITE "):
                    continue
                fields = [l for l in head[1:] if l.split(":")[0].lower() in ("via", "from", "to", "call-id", "cseq")]
                call_id = next(l.split(":", 1)[1].strip() for l in fields if l.lower().startswith("call-id"))
                backend = f"sip:backend{self.sockets.index(sock) + 1}.example.com:5060"
                self.reached.setdefault(call_id, backend)
                answer = "SIP/2.0 486 Busy Here\r\n" + "".join(
                    (l + ";tag=busy" if l.lower().startswith("to:") else l) + "\r\n" for l in fields
                )
                sock.sendto((answer + "Content-Length: 0\r\n\r\n").encode(), peer)

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def backends() -> Iterator[Backends]:
    running = Backends()
    yield running
    running.close()


@pytest.fixture
def config(tmp_path: Path, backends: Backends) -> Path:
    sip, admin = free_port(), free_port()
    path = tmp_path / "lb.yaml"
    destinations = "".join(
        f"        - {{uri: \"sip:backend{n}.example.com:5060\", address: \"127.0.0.1:{port}\", weight: {w}}}\n"
        for n, (port, w) in enumerate(zip(backends.ports, WEIGHTS), start=1)
    )
    path.write_text(
        f"listen: {{udp: [\"127.0.0.1:{sip}\"]}}\n"
        f"script: {{path: \"{REPO / 'scripts' / 'lb.py'}\"}}\n"
        "gateway:\n  groups:\n    - name: backends\n      algorithm: hash\n      destinations:\n"
        + destinations
        + f"admin: {{listen: \"127.0.0.1:{admin}\"}}\n"
        + "# SIP_PORT " + str(sip) + "\n"
        "log: {level: warn}\n"
    )
    return path


@pytest.fixture
def daemon(config: Path) -> Iterator[http.client.HTTPConnection]:
    admin = config.read_text().split("admin: {listen: \"")[1].split("\"")[0]
    host, port = admin.split(":")
    process = subprocess.Popen(
        [find_siphon(REPO), "--config", str(config)],
        stdout=subprocess.DEVNULL,
        env=dict(os.environ, NO_COLOR="1"),
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                connection = http.client.HTTPConnection(host, int(port), timeout=5)
                connection.request("GET", "/admin/ready")
                reply = connection.getresponse()
                reply.read()
                if reply.status == 200:
                    break
                time.sleep(0.1)
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        yield connection
    finally:
        process.terminate()
        process.wait(timeout=10)


def invite(user: str, call_id: str, port: int) -> bytes:
    return (
        f"INVITE sip:{user}@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{call_id};rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:caller@example.net>;tag=c\r\n"
        f"To: <sip:{user}@example.com>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:caller@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_harness_and_daemon_agree_on_10000_random_keys(
    config: Path, daemon: http.client.HTTPConnection, backends: Backends
) -> None:
    rng = random.Random(4242)
    users = [f"u{rng.getrandbits(64):016x}" for _ in range(KEYS)]
    disagree = []
    spread: dict[str, int] = {}
    with Harness(config, binary=find_siphon(REPO)) as h:
        for user in users:
            aor = f"sip:{user}@example.com"
            picked = h.request("INVITE", ruri=aor).uri
            daemon.request("GET", "/admin/gateways/backends/select?key=" + urllib.parse.quote(aor))
            answer = json.loads(daemon.getresponse().read())
            if picked != answer["destination"]["uri"]:
                disagree.append((aor, picked, answer["destination"]["uri"]))
            spread[str(picked)] = spread.get(str(picked), 0) + 1
    assert not disagree, f"{len(disagree)} of {KEYS} differ, e.g. {disagree[:3]}"

    # The first RELAYED keys as real INVITEs: each reaches the backend the
    # harness named.
    sip_port = int(config.read_text().split("# SIP_PORT ")[1].split()[0])
    with Harness(config, binary=find_siphon(REPO)) as h:
        expected = {f"agree-{i}": h.request("INVITE", ruri=f"sip:{users[i]}@example.com").uri for i in range(RELAYED)}
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    caller_port = int(caller.getsockname()[1])
    for i in range(RELAYED):
        caller.sendto(invite(users[i], f"agree-{i}", caller_port), ("127.0.0.1", sip_port))
        if i % 50 == 49:
            time.sleep(0.05)
    deadline = time.monotonic() + 15
    while len(backends.reached) < RELAYED and time.monotonic() < deadline:
        time.sleep(0.05)
    caller.close()
    assert len(backends.reached) == RELAYED, f"only {len(backends.reached)} INVITEs reached a backend"
    wrong = [(c, expected[c], b) for c, b in backends.reached.items() if expected.get(c) != b]
    assert not wrong, f"{len(wrong)} relayed elsewhere than the harness said, e.g. {wrong[:3]}"
    # Weighted rendezvous hashing: shares follow the weights 1:2:3:1.
    assert len(spread) == 4, spread
    share = {uri: count / KEYS for uri, count in spread.items()}
    assert abs(share["sip:backend3.example.com:5060"] - 3 / 7) < 0.03, share
    assert abs(share["sip:backend1.example.com:5060"] - 1 / 7) < 0.03, share
