"""The backend script, proxy.py: registrar, calls forked to the registered
contacts, probes answered, other domains relayed."""

from pathlib import Path

from siphon.testing import Harness

from conftest import SIPHON


def test_register_is_saved_and_answered_with_the_bindings(backend: Harness) -> None:
    d = backend.request(
        "REGISTER",
        ruri="sip:example.com",
        to="sip:alice@example.com",
        headers={"Contact": "<sip:alice@192.0.2.21:5062>", "Expires": "600"},
    )
    assert (d.action, d.code) == ("reply", 200)
    contacts = [value for name, value in d.headers if name.lower() == "contact"]
    assert any("sip:alice@192.0.2.21:5062" in c and "expires=600" in c for c in contacts), d
    # A call to alice now forks to that contact, record-routed.
    call = backend.request("INVITE", ruri="sip:alice@example.com")
    assert call.action == "fork"
    assert [t["uri"] for t in call.targets] == ["sip:alice@192.0.2.21:5062"]
    assert call.targets[0]["address"] == "192.0.2.21:5062"
    assert call.record_route


def test_a_seeded_subscriber_with_two_phones_gets_both(backend: Harness) -> None:
    assert backend.register("sip:bob@example.com", "sip:bob@192.0.2.31:5060") == 200
    assert backend.register("sip:bob@example.com", "sip:bob@192.0.2.32:5070") == 200
    d = backend.request("INVITE", ruri="sip:bob@example.com")
    assert d.action == "fork"
    assert sorted(t["uri"] for t in d.targets) == [
        "sip:bob@192.0.2.31:5060",
        "sip:bob@192.0.2.32:5070",
    ]


def test_a_binding_reached_through_a_path_keeps_it(backend: Harness) -> None:
    path = "<sip:198.51.100.1:5060;lr>"
    assert backend.register("sip:carol@example.com", "sip:carol@10.1.2.3:5060", path=[path]) == 200
    d = backend.request("INVITE", ruri="sip:carol@example.com")
    assert d.targets == [
        {"uri": "sip:carol@10.1.2.3:5060", "path": [path], "address": "198.51.100.1:5060", "transport": "udp"}
    ]


def test_unknown_subscribers_get_404(backend: Harness) -> None:
    d = backend.request("INVITE", ruri="sip:nobody@example.com")
    assert (d.action, d.code, d.reason) == ("reply", 404, "Not Found")


def test_the_lb_probe_is_answered_here(backend: Harness) -> None:
    d = backend.request("OPTIONS", ruri="sip:backend1.example.com")
    assert (d.action, d.code) == ("reply", 200)


def test_other_domains_are_relayed_to_their_request_uri_for_a_trusted_peer(backend: Harness) -> None:
    pbx = "198.51.100.50:5060"
    d = backend.request("INVITE", ruri="sip:dave@192.0.2.99:5080", source=pbx)
    assert d.action == "relay"
    assert (d.uri, d.address) == ("sip:dave@192.0.2.99:5080", "192.0.2.99:5080")
    assert d.record_route
    # A name the dry run does not look up is named, not resolved.
    named = backend.request("INVITE", ruri="sip:erin@pbx.example.org", source=pbx)
    assert (named.address, named.fields.get("host")) == (None, "pbx.example.org")


def test_no_one_else_relays_through_it_whatever_the_from(backend: Harness) -> None:
    d = backend.request("INVITE", ruri="sip:dave@192.0.2.99:5080", from_="sip:boss@example.com")
    assert (d.action, d.code, d.reason) == ("reply", 403, "Not relaying")


def test_with_auth_a_register_is_challenged_then_refused_for_someone_else(
    backend_config: Path,
) -> None:
    config = backend_config.read_text() + "auth: {realm: example.com, credentials: {alice: secret}}\n"
    backend_config.write_text(config)
    with Harness(backend_config, binary=SIPHON) as backend:
        d = backend.request("REGISTER", ruri="sip:example.com", to="sip:alice@example.com",
                            headers={"Contact": "<sip:alice@192.0.2.21:5062>"})
        assert (d.action, d.code) == ("reply", 401)
        assert any(name.lower() == "www-authenticate" for name, _ in d.headers), d
