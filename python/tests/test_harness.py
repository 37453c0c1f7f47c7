"""The harness itself: errors come back clearly, header edits and script
exceptions are reported as the daemon would act on them."""

from pathlib import Path

import pytest

from siphon.testing import Harness, HarnessError, find_siphon

REPO = Path(__file__).resolve().parents[2]
SIPHON = find_siphon(REPO)

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
    with Harness(write(tmp_path), binary=SIPHON) as h:
        d = h.request("INVITE", ruri="sip:x@example.com", headers={"X-Key": "k1", "X-Secret": "s"})
        assert d.action == "relay" and d.uri in ("sip:a.example.com", "sip:b.example.com")
        assert d.address == {"sip:a.example.com": "192.0.2.1:5060", "sip:b.example.com": "192.0.2.2:5060"}[d.uri]
        assert d.headers_set == {"X-Routed-By": "harness-test"}
        assert d.headers_removed == ["X-Secret"]
        assert d.uri == h.select("pool", "k1")[0]


def test_a_script_exception_is_a_500(tmp_path: Path) -> None:
    with Harness(write(tmp_path), binary=SIPHON) as h:
        d = h.request("INVITE", ruri="sip:x@example.com", headers={"X-Boom": "1"})
        assert (d.action, d.code, d.script_error) == ("reply", 500, True)
        # The harness goes on after it.
        assert h.request("INVITE", ruri="sip:x@example.com", headers={"X-Key": "k"}).action == "relay"


def test_a_bad_config_names_the_key(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, extra="server: {drain_secs: 99999}\n")
    with pytest.raises(HarnessError, match="did not load"):
        Harness(config, binary=SIPHON)
    assert "server.drain_secs" in capfd.readouterr().err


def test_bad_requests_are_errors_not_hangs(tmp_path: Path) -> None:
    with Harness(write(tmp_path), binary=SIPHON) as h:
        with pytest.raises(HarnessError, match="not a SIP message"):
            h.run("hello")
        with pytest.raises(HarnessError, match="no gateway group nope"):
            h.mark_down("nope", "sip:a.example.com")
        with pytest.raises(HarnessError, match="has no destination"):
            h.mark_down("pool", "sip:z.example.com")
        assert h.request("INVITE", ruri="sip:x@example.com", headers={"X-Key": "k"}).action == "relay"


def test_what_the_core_answers_itself_is_reported_as_such(tmp_path: Path) -> None:
    with Harness(write(tmp_path), binary=SIPHON) as h:
        cancel = h.request("CANCEL", ruri="sip:x@example.com")
        assert (cancel.action, cancel.code, cancel.by) == ("reply", 481, "core")
        hops = h.request("INVITE", ruri="sip:x@example.com", max_forwards=0)
        assert (hops.code, hops.by) == (483, "core")
        required = h.request("INVITE", ruri="sip:x@example.com", headers={"Proxy-Require": "foo"})
        assert (required.code, required.headers) == (420, [("Unsupported", "foo")])


NO_ACTION = '''
from siphon import proxy

@proxy.on_request
def route(request):
    print("a print() does not reach the harness's pipe")
    if request.method == "MESSAGE":
        request.relay("sip:nowhere.example.com;transport=sctp")
'''


def test_an_invite_left_without_action_gets_the_cores_500(tmp_path: Path) -> None:
    with Harness(write(tmp_path, NO_ACTION), binary=SIPHON) as h:
        invite = h.request("INVITE", ruri="sip:x@example.com")
        assert (invite.action, invite.code, invite.by, invite.script_error) == ("reply", 500, "core", False)
        assert h.request("OPTIONS", ruri="sip:x@example.com").action == "none"
        unusable = h.request("MESSAGE", ruri="sip:x@example.com")
        assert (unusable.code, unusable.by) == (478, "core")
        assert unusable.next_hop_error and "sctp" in unusable.next_hop_error


FAILURE = '''
from siphon import proxy

@proxy.on_request
def route(request):
    request.relay("sip:primary.example.com")

@proxy.on_failure
def failed(request, response):
    if response is None:
        request.reply(504, "Primary Timed Out")
    elif response.status == 486:
        return
    else:
        request.relay("sip:192.0.2.77:5060")
'''


def test_on_failure_sees_the_best_response_or_a_timeout(tmp_path: Path) -> None:
    with Harness(write(tmp_path, FAILURE), binary=SIPHON) as h:
        invite = h.build("INVITE", "sip:x@example.com")
        assert h.run(invite).uri == "sip:primary.example.com"
        timed_out = h.run_failure(invite, None)
        assert (timed_out.action, timed_out.code, timed_out.reason) == ("reply", 504, "Primary Timed Out")
        busy = h.run_failure(invite, 486)
        assert busy.action == "none"
        standby = h.run_failure(invite, 503)
        assert (standby.action, standby.uri, standby.address) == ("relay", "sip:192.0.2.77:5060", "192.0.2.77:5060")


def test_a_body_with_lf_line_ends_keeps_its_length(tmp_path: Path) -> None:
    body = "v=0\no=- 1 1 IN IP4 192.0.2.10\ns=-\n"
    raw = (
        "INVITE sip:x@example.com SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKlf\n"
        "Max-Forwards: 70\nFrom: <sip:a@example.net>;tag=1\nTo: <sip:x@example.com>\n"
        f"Call-ID: lf\nCSeq: 1 INVITE\nX-Key: k\nContent-Type: application/sdp\nContent-Length: {len(body)}\n\n"
        + body
    )
    with Harness(write(tmp_path), binary=SIPHON) as h:
        assert h.run(raw).action == "relay"


MEMBERSHIP = '''
from siphon import proxy, gateway

@proxy.on_request
def route(request):
    if gateway.is_from("pool", request):
        request.reply(299, "From " + str(request.source_group))
    elif gateway.is_from("pool", request, any_port=True):
        request.reply(298, "Host of pool")
    else:
        request.reply(403, "Caller " + str(request.source_group))
'''


def test_is_from_tells_a_backends_request_from_a_callers(tmp_path: Path) -> None:
    with Harness(write(tmp_path, MEMBERSHIP), binary=SIPHON) as h:
        backend = h.request("INVITE", ruri="sip:x@example.com", source="192.0.2.2:5060")
        assert (backend.code, backend.reason) == (299, "From pool")
        other_port = h.request("INVITE", ruri="sip:x@example.com", source="192.0.2.2:5099")
        assert other_port.code == 298
        caller = h.request("INVITE", ruri="sip:x@example.com", source="198.51.100.7:5060")
        assert (caller.code, caller.reason) == (403, "Caller None")
