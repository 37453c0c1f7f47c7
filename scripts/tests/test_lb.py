"""The seed's lb.py, decision by decision: affinity by the To URI, a
failover path when a backend is down, 503 when every one is, and in-dialog
requests following their route set."""

from siphon.testing import Harness

BACKEND1 = "sip:backend1.example.com"
BACKEND2 = "sip:backend2.example.com"


def test_a_new_call_goes_to_a_backend_with_record_route(lb: Harness) -> None:
    d = lb.request("INVITE", ruri="sip:bob@example.com")
    assert d.action == "relay"
    assert d.uri in (BACKEND1, BACKEND2)
    assert d.address in ("127.0.0.1:5071", "127.0.0.1:5072")
    assert d.record_route
    # The failover order: the other backend next.
    assert sorted(d.failover) == [BACKEND1, BACKEND2]
    assert d.failover[0] == d.uri


def test_affinity_follows_the_aor_whatever_the_phone_adds(lb: Harness) -> None:
    users = [f"sip:user{i}@example.com" for i in range(40)]
    first = {user: lb.request("INVITE", ruri=user).uri for user in users}
    assert set(first.values()) == {BACKEND1, BACKEND2}, "the hash spreads users"
    for user in users:
        # A REGISTER and a call of the same AoR, the call's To carrying a
        # display name, an upper-case host and URI parameters.
        register = lb.request("REGISTER", ruri="sip:example.com", to=user)
        name, host = user[4:].split("@")
        call = lb.request(
            "INVITE",
            ruri=user,
            to=f'"Bob" <sip:{name}@{host.upper()};transport=udp;user=phone>',
        )
        assert register.uri == first[user] == call.uri, user
        # The harness answers as the daemon's admin select would rank it.
        assert lb.select("backends", f"sip:{name}@{host}")[0] == first[user]


def test_a_backend_marked_down_moves_only_its_users(lb: Harness) -> None:
    users = [f"sip:sub{i}@example.com" for i in range(30)]
    before = {user: lb.request("INVITE", ruri=user).uri for user in users}
    lb.mark_down("backends", BACKEND1)
    after = {user: lb.request("INVITE", ruri=user).uri for user in users}
    for user in users:
        assert after[user] == BACKEND2
        if before[user] == BACKEND2:
            assert after[user] == before[user]
    lb.mark_up("backends", BACKEND1)
    assert {user: lb.request("INVITE", ruri=user).uri for user in users} == before


def test_every_backend_down_gets_503(lb: Harness) -> None:
    lb.mark_down("backends", BACKEND1)
    lb.mark_down("backends", BACKEND2)
    d = lb.request("INVITE", ruri="sip:bob@example.com")
    assert (d.action, d.code, d.reason) == ("reply", 503, "Service Unavailable")
    assert not d.record_route


def test_in_dialog_requests_follow_the_route_set(lb: Harness) -> None:
    # A BYE whose Route names this LB (it record-routed the INVITE) and then
    # the backend: the LB's entry is consumed, the backend is the next hop.
    d = lb.request(
        "BYE",
        ruri="sip:bob@192.0.2.50:5062",
        to_tag="callee",
        route=["<sip:127.0.0.1:5060;lr>", "<sip:127.0.0.1:5072;lr>"],
    )
    assert d.action == "relay"
    assert d.uri == "sip:127.0.0.1:5072;lr"
    assert d.address == "127.0.0.1:5072"
    assert not d.record_route


def test_in_dialog_without_a_route_set_gets_404(lb: Harness) -> None:
    d = lb.request("BYE", ruri="sip:bob@192.0.2.50:5062", to_tag="callee")
    assert (d.action, d.code, d.reason) == ("reply", 404, "Not Here")


def test_a_raw_message_runs_as_received(lb: Harness) -> None:
    raw = (
        "OPTIONS sip:carol@example.com SIP/2.0\n"
        "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKraw1\n"
        "Max-Forwards: 70\n"
        "From: <sip:probe@example.net>;tag=1\n"
        "To: <sip:carol@example.com>\n"
        "Call-ID: raw-1\n"
        "CSeq: 1 OPTIONS\n"
        "Content-Length: 0\n\n"
    )
    d = lb.run(raw, source="198.51.100.7:5060")
    assert d.action == "relay"
    assert d.uri == lb.select("backends", "sip:carol@example.com")[0]
