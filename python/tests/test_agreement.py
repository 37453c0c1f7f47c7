"""The harness and a running daemon pick the same backend: 10,000 random
keys through the seed's lb.py in the harness against the daemon's own
ranking (`GET /admin/gateways/backends/select`, the same ranking the relay
path uses, see tests/e2e_gateway.rs), over four weighted destinations."""

import http.client
import json
import os
import random
import socket
import subprocess
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


@pytest.fixture
def config(tmp_path: Path) -> Path:
    sip, admin = free_port(), free_port()
    path = tmp_path / "lb.yaml"
    destinations = "".join(
        f"        - {{uri: \"sip:backend{n}.example.com:5060\", address: \"127.0.0.1:{5070 + n}\", weight: {w}}}\n"
        for n, w in [(1, 1), (2, 2), (3, 3), (4, 1)]
    )
    path.write_text(
        f"listen: {{udp: [\"127.0.0.1:{sip}\"]}}\n"
        f"script: {{path: \"{REPO / 'scripts' / 'lb.py'}\"}}\n"
        "gateway:\n  groups:\n    - name: backends\n      algorithm: hash\n      destinations:\n"
        + destinations
        + f"admin: {{listen: \"127.0.0.1:{admin}\"}}\n"
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
                if connection.getresponse().read() is not None:
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        yield connection
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_harness_and_daemon_agree_on_10000_random_keys(
    config: Path, daemon: http.client.HTTPConnection
) -> None:
    rng = random.Random(4242)
    users = [f"u{rng.getrandbits(64):016x}" for _ in range(KEYS)]
    disagree = []
    spread: dict[str, int] = {}
    with Harness(config) as h:
        for user in users:
            aor = f"sip:{user}@example.com"
            picked = h.request("INVITE", ruri=aor).uri
            daemon.request("GET", "/admin/gateways/backends/select?key=" + urllib.parse.quote(aor))
            answer = json.loads(daemon.getresponse().read())
            if picked != answer["destination"]["uri"]:
                disagree.append((aor, picked, answer["destination"]["uri"]))
            spread[str(picked)] = spread.get(str(picked), 0) + 1
    assert not disagree, f"{len(disagree)} of {KEYS} differ, e.g. {disagree[:3]}"
    # Weighted rendezvous hashing: shares follow the weights 1:2:3:1.
    assert len(spread) == 4, spread
    share = {uri: count / KEYS for uri, count in spread.items()}
    assert abs(share["sip:backend3.example.com:5060"] - 3 / 7) < 0.03, share
    assert abs(share["sip:backend1.example.com:5060"] - 1 / 7) < 0.03, share
