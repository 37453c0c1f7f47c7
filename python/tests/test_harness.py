"""The harness itself: errors come back clearly, header edits and script
exceptions are reported as the daemon would act on them."""

from pathlib import Path

import pytest

from siphon.testing import Harness, HarnessError

SCRIPT = '''
from siphon import proxy, gateway

@proxy.on_request
def route(request):
    if request.header("X-Boom"):
        raise RuntimeError("boom")
    request.set_header("X-Routed-By", "harness-test")
    request.remove_header("X-Secret")
    request.relay(gateway.select("pool", key=request.header("X-Key")))
'''


def write(tmp_path: Path, script: str = SCRIPT, extra: str = "") -> Path:
    (tmp_path / "script.py").write_text(script)
    config = tmp_path / "siphon.yaml"
    config.write_text(
        "listen: {udp: [\"127.0.0.1:5060\"]}\n"
        "script: {path: script.py}\n"
        "gateway:\n  groups:\n"
        "    - name: pool\n      algorithm: hash\n      destinations:\n"
        "        - {uri: \"sip:a.example.com\", address: \"192.0.2.1:5060\"}\n"
        "        - {uri: \"sip:b.example.com\", address: \"192.0.2.2:5060\", weight: 3}\n"
        + extra
    )
    return config


def test_header_edits_are_reported(tmp_path: Path) -> None:
    with Harness(write(tmp_path)) as h:
        d = h.request("INVITE", ruri="sip:x@example.com", headers={"X-Key": "k1", "X-Secret": "s"})
        assert d.action == "relay" and d.uri in ("sip:a.example.com", "sip:b.example.com")
        assert d.address == {"sip:a.example.com": "192.0.2.1:5060", "sip:b.example.com": "192.0.2.2:5060"}[d.uri]
        assert d.headers_set == {"X-Routed-By": "harness-test"}
        assert d.headers_removed == ["X-Secret"]
        assert d.uri == h.select("pool", "k1")[0]


def test_a_script_exception_is_a_500(tmp_path: Path) -> None:
    with Harness(write(tmp_path)) as h:
        d = h.request("INVITE", ruri="sip:x@example.com", headers={"X-Boom": "1"})
        assert (d.action, d.code, d.script_error) == ("reply", 500, True)
        # The harness goes on after it.
        assert h.request("INVITE", ruri="sip:x@example.com", headers={"X-Key": "k"}).action == "relay"


def test_a_bad_config_names_the_key(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, extra="server: {drain_secs: 99999}\n")
    with pytest.raises(HarnessError, match="did not load"):
        Harness(config)
    assert "server.drain_secs" in capfd.readouterr().err


def test_bad_requests_are_errors_not_hangs(tmp_path: Path) -> None:
    with Harness(write(tmp_path)) as h:
        with pytest.raises(HarnessError, match="not a SIP message"):
            h.run("hello")
        with pytest.raises(HarnessError, match="no gateway group nope"):
            h.mark_down("nope", "sip:a.example.com")
        with pytest.raises(HarnessError, match="has no destination"):
            h.mark_down("pool", "sip:z.example.com")
        assert h.request("INVITE", ruri="sip:x@example.com", headers={"X-Key": "k"}).action == "relay"
