"""A plain stateful proxy: relays every request to its Request-URI.

In-dialog requests (ACK for 2xx, BYE, re-INVITE...) follow the route set that
record_route() established; new dialogs and out-of-dialog requests are
record-routed and relayed to the Request-URI. OPTIONS addressed to the proxy
itself (a local host and no user part) is answered here, as a keep-alive.
"""
from siphon import proxy, log


@proxy.on_request
def route(request):
    if request.in_dialog:
        if request.loose_route():
            request.relay()
        else:
            log.warning(f"in-dialog {request.method} {request.ruri} has no route set")
            request.reply(404, "Not Here")
        return

    if request.method == "OPTIONS" and request.ruri.is_local and not request.ruri.user:
        request.reply(200)
        return

    log.debug(f"relay {request.method} {request.ruri} from {request.source_ip}:{request.source_port}")
    request.record_route()
    request.relay()
