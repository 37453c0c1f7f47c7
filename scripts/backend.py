"""A backend node behind the front load balancer: registrar and call routing.

The front LB hashes on the AoR, so a subscriber's REGISTER and the calls to
them reach this same node. REGISTER is saved here (the reply is sent by the
registrar); a new call is looked up and forked to every registered contact,
highest q first; the first to answer wins and the others are CANCELed.

An R-URI whose host is one of this node's `domain.local` names (or its own
address) finds the bindings registered under any of those names, so calls
relayed by the LB with `sip:alice@<lb-domain>` match REGISTERs for the same
user at that domain.
"""
from siphon import proxy, registrar, log


@proxy.on_request
def route(request):
    # Keep-alive probes from the LB are answered here.
    if request.method == "OPTIONS" and request.ruri.is_local and not request.ruri.user:
        request.reply(200)
        return

    # In-dialog requests follow the route set record_route() established.
    if request.in_dialog:
        if request.loose_route():
            request.relay()
        else:
            request.reply(404, "Not Here")
        return

    if request.method == "REGISTER":
        registrar.save(request)
        return

    contacts = registrar.lookup(request.ruri)
    if not contacts:
        log.info(f"{request.method} {request.ruri}: no registered contact")
        request.reply(404, "Not Found")
        return

    log.debug(f"{request.method} {request.ruri} -> {[c.uri for c in contacts]}")
    request.record_route()
    request.fork(contacts)
