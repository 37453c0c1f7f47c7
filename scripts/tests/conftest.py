"""Shared fixtures of the routing scripts' tests (see README "Writing routing
scripts"). Each test gets a Harness: the siphon binary running the script
offline with the daemon's own code."""

from pathlib import Path
from typing import Iterator

import pytest

from siphon.testing import Harness, find_siphon

REPO = Path(__file__).resolve().parents[2]
# The binary of this checkout, wherever the configs are written.
SIPHON = find_siphon(REPO)


@pytest.fixture
def lb() -> Iterator[Harness]:
    """The seed's load balancer: config/lb.yaml with scripts/lb.py."""
    with Harness(REPO / "config" / "lb.yaml", binary=SIPHON) as harness:
        yield harness


@pytest.fixture
def backend_config(tmp_path: Path) -> Path:
    """A backend node: scripts/proxy.py as registrar and proxy for
    example.com, whose trusted peers (a PBX at 198.51.100.50) may relay
    to other domains."""
    config = tmp_path / "backend.yaml"
    config.write_text(
        "listen: {udp: [\"127.0.0.1:5060\"], tcp: [\"127.0.0.1:5060\"]}\n"
        "domain: {local: [\"example.com\", \"backend1.example.com\"]}\n"
        "security: {trusted: [\"198.51.100.50/32\"]}\n"
        f"script: {{path: \"{REPO / 'scripts' / 'proxy.py'}\"}}\n"
        "registrar: {backend: memory}\n"
        "log: {level: warn}\n"
    )
    return config


@pytest.fixture
def backend(backend_config: Path) -> Iterator[Harness]:
    with Harness(backend_config, binary=SIPHON) as harness:
        yield harness
