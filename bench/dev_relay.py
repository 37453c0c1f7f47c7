"""Stand-in for scripts/lb.py while gateway.select is not wired yet.

Same shape as lb.py (in-dialog requests follow the route set; new requests are
record-routed and relayed to a backend chosen by a hash of the To URI), but the
backend is picked here in Python from a fixed list instead of by the gateway
group, so there is no health check. Only for developing bench/run.sh:
    bench/run.sh --siphon-script bench/dev_relay.py ...
"""
import zlib

from siphon import proxy

BACKENDS = ("sip:127.0.0.1:5071", "sip:127.0.0.1:5072")


@proxy.on_request
def route(request):
    if request.in_dialog:
        if request.loose_route():
            request.relay()
        else:
            request.reply(404, "Not Here")
        return

    key = str(request.to_uri).encode()
    request.record_route()
    request.relay(BACKENDS[zlib.crc32(key) % len(BACKENDS)])
