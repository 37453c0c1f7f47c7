"""The stubs catch what they are for: the shipped scripts type-check, a
typed script passes --strict, and a misspelt name fails. (That the stubs
match the embedded module is checked in src/script/stubs.rs.)"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def mypy(tmp_path: Path, *args: str, installed: bool = False) -> subprocess.CompletedProcess[str]:
    """mypy over ARGS with the stubs of this checkout, or (`installed`) with
    those `pip install ./python` put in site-packages."""
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    if not installed:
        env["MYPYPATH"] = str(REPO / "python")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )


@pytest.mark.parametrize("script", ["lb.py", "proxy.py"])
def test_the_shipped_scripts_type_check(tmp_path: Path, script: str) -> None:
    result = mypy(tmp_path, "--check-untyped-defs", str(REPO / "scripts" / script))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_installed_package_carries_the_stubs(tmp_path: Path) -> None:
    """What `pip install ./python` installed (PEP 561), not this checkout."""
    result = mypy(tmp_path, "--check-untyped-defs", str(REPO / "scripts" / "lb.py"), installed=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout, result.stdout


TYPED_LB = '''
from typing import Optional

from siphon import Destination, Request, gateway, log, proxy


@proxy.on_request("OPTIONS")
def options(request: Request) -> None:
    request.reply(200)


@proxy.on_request
def route(request: Request) -> None:
    if request.in_dialog:
        if request.loose_route():
            request.relay()
        else:
            request.reply(404, "Not Here")
        return
    destination: Optional[Destination] = gateway.select("backends", key=str(request.to_uri))
    if not destination:
        log.error("no healthy backend in 'backends' group")
        request.reply(503, "Service Unavailable")
        return
    log.info(f"LB {request.method} {request.to_uri} -> {destination.uri}")
    request.record_route()
    request.relay(destination.uri)
'''


def test_a_typed_script_passes_strict(tmp_path: Path) -> None:
    script = tmp_path / "typed_lb.py"
    script.write_text(TYPED_LB)
    result = mypy(tmp_path, "--strict", str(script))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "good, typo",
    [
        ("gateway.select(", "gateway.selec("),
        ("request.record_route()", "request.record_rout()"),
        ("request.reply(503,", "request.reply('503',"),
    ],
)
def test_a_misspelt_name_fails(tmp_path: Path, good: str, typo: str) -> None:
    script = tmp_path / "broken.py"
    script.write_text(TYPED_LB.replace(good, typo, 1))
    result = mypy(tmp_path, "--check-untyped-defs", str(script))
    assert result.returncode == 1, result.stdout
    assert "broken.py:" in result.stdout and "error" in result.stdout, result.stdout


def test_the_typed_script_runs_unchanged_in_the_daemon(tmp_path: Path) -> None:
    """`from siphon import Request, Destination` works in the daemon too."""
    from siphon.testing import Harness, find_siphon

    script = tmp_path / "typed_lb.py"
    script.write_text(TYPED_LB)
    config = tmp_path / "lb.yaml"
    config.write_text(
        (REPO / "config" / "lb.yaml").read_text().replace("../scripts/lb.py", str(script))
    )
    with Harness(config, binary=find_siphon(REPO)) as h:
        d = h.request("INVITE", ruri="sip:bob@example.com")
        assert d.action == "relay" and d.record_route
        options = h.request("OPTIONS", ruri="sip:127.0.0.1")
        assert (options.action, options.code) == ("reply", 200)


def test_the_harness_and_the_examples_pass_strict(tmp_path: Path) -> None:
    result = mypy(
        tmp_path,
        "--strict",
        str(REPO / "python" / "siphon" / "testing.py"),
        str(REPO / "scripts" / "tests"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
