"""A stateful proxy and registrar: siphon's backend node, and a plain proxy.

Behind the front load balancer (which hashes on the AoR), a subscriber's
REGISTER and the calls to them reach this same node:
- OPTIONS to the proxy itself (a local host, no user) is answered here, so
  the LB's health probes see 200;
- in-dialog requests follow the route set that record_route() established;
- for a local domain (`domain.local`), REGISTER is saved by the registrar and
  any other request is looked up and forked to every registered contact
  (highest q first; the first to answer wins, the others are CANCELed), or
  answered 404;
- a request for any other domain is record-routed and relayed to its
  Request-URI, as a plain proxy does.

With an `auth:` section in the config, a REGISTER must carry digest
credentials of the user it registers (401 challenge, 403 for someone
else's AoR); a new request from one of our own users (From in a local
domain) must carry proxy credentials (407), so nobody can call as someone
else; and a request that would leave for another domain must carry them
whatever its From says and wherever it comes from. Without `auth:`, only
sources in `security.trusted` may relay to other domains: anyone else gets
403 Not relaying, as from Kamailio's stock config. So this is never an open
relay.
"""
from siphon import auth, proxy, registrar, log


@proxy.on_request
def route(request):
    if request.in_dialog:
        if request.loose_route():
            request.relay()
        else:
            log.warning(f"in-dialog {request.method} {request.ruri} has no route set")
            request.reply(404, "Not Here")
        return

    if request.ruri.is_local:
        if request.method == "OPTIONS" and not request.ruri.user:
            request.reply(200)
            return
        if request.method == "REGISTER":
            if auth.enabled:
                if not auth.check(request):
                    return  # challenged (401)
                if request.to_uri is None or request.to_uri.user != request.auth_user:
                    log.info(f"REGISTER for {request.to_uri} by user {request.auth_user}: refused")
                    request.reply(403, "Forbidden")
                    return
            registrar.save(request)
            return
        if auth.enabled and from_our_user(request) and not auth.check(request):
            return  # challenged
        contacts = registrar.lookup(request.ruri)
        if not contacts:
            log.info(f"{request.method} {request.ruri}: no registered contact")
            request.reply(404, "Not Found")
            return
        log.debug(f"{request.method} {request.ruri} -> {[c.uri for c in contacts]}")
        request.record_route()
        request.fork(contacts)
        return

    # Leaving for another domain. An ACK out of a dialog is no one's: drop it.
    if request.method == "ACK":
        return
    # With auth, the sender must prove who it is, whatever its From says
    # (behind a front LB every request comes from a trusted address). Without
    # it, only trusted peers relay.
    if auth.enabled:
        if not auth.check(request):
            return  # challenged (407)
    elif not request.source_trusted:
        request.reply(403, "Not relaying")
        return
    log.debug(f"relay {request.method} {request.ruri} from {request.source_ip}:{request.source_port}")
    request.record_route()
    request.relay()


def from_our_user(request):
    """A request claiming to come from one of our subscribers."""
    return request.from_uri is not None and request.from_uri.is_local and request.method != "ACK"
