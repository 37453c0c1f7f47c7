#!/usr/bin/env python3
"""A small SIP user agent for the HA demo (python3 standard library only).

Three sub-commands, all over UDP on 127.0.0.1:

  serve     Listen as the callee for several users at once, one UDP socket per
            user (each user's Contact port). Answers INVITE with 100, 180 and
            200 (retransmitting the 200 until the ACK), and BYE/OPTIONS/CANCEL
            with 200. Every request it receives is logged as one line:
                RECV <METHOD> user=<user> call_id=<id> vias=<n>
            so validate.sh can check which UA a call reached and through how
            many proxies (Via count) the request came.
  register  REGISTER users through the LB, each with Contact port base+index
            (--only picks some of them, keeping their ports).
            Prints `REGISTER <user> <code>` per user; exit 1 if any is not 200.
  call      Call a user through the LB: INVITE, read the responses up to the
            FINAL one (the 100 Trying is provisional and skipped), ACK, then BYE
            along the route set the 200 recorded (Record-Route). Prints one
            `CALL ...` summary line per user; exit 0 only if each INVITE got
            the --expect final code (200 by default) and, on 200, the BYE too.

The serve and register commands take the same --users/--base-port, so a
user's Contact is always sip:<user>@127.0.0.1:<base-port + index>.
"""

import argparse
import random
import re
import select
import socket
import sys
import time

HOST = "127.0.0.1"
T1 = 0.5  # RFC 3261 T1: first retransmission interval, doubled each time


def token(prefix):
    return f"{prefix}{random.getrandbits(48):012x}"


def parse(data):
    """(start line, [(name, value)], body) of a SIP message, or None."""
    text = data.decode("utf-8", "replace")
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    if not lines or not lines[0]:
        return None
    headers = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded header line
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return lines[0], headers, body


COMPACT = {"v": "via", "i": "call-id", "f": "from", "t": "to", "m": "contact", "l": "content-length"}


def values(headers, name):
    """Every value of header NAME (compact forms and comma-joined lists too)."""
    name = name.lower()
    found = []
    for key, value in headers:
        key = COMPACT.get(key.lower(), key.lower())
        if key == name:
            if name in ("via", "record-route", "route"):
                found.extend(split_list(value))
            else:
                found.append(value)
    return found


def first(headers, name):
    found = values(headers, name)
    return found[0] if found else ""


def split_list(value):
    """Split a comma-joined header list, ignoring commas inside <...> or quotes."""
    parts, depth, quoted, current = [], 0, False, ""
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def angle_uri(value):
    """The URI inside <...>, or the value up to its first ';' when bare."""
    match = re.search(r"<([^>]*)>", value)
    if match:
        return match.group(1)
    return value.split(";")[0].strip()


def uri_address(uri):
    """(host, port) a SIP URI points at; port 5060 when absent."""
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    rest = rest.split(";")[0].split("?")[0]
    hostport = rest.split("@")[-1]
    host, _, port = hostport.partition(":")
    return host, int(port) if port.isdigit() else 5060


def status_of(start_line):
    match = re.match(r"SIP/2\.0 (\d{3})", start_line)
    return int(match.group(1)) if match else None


def user_of(uri):
    match = re.match(r"sips?:([^@;>]+)@", uri)
    return match.group(1) if match else ""


def build(start_line, headers, body=""):
    lines = [start_line]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def response(request_headers, code, reason, to_tag=None, extra=()):
    """A response to a request: Via, From, To, Call-ID, CSeq copied (and
    Record-Route for 2xx to INVITE), with our To tag added."""
    headers = [("Via", v) for v in values(request_headers, "via")]
    headers.append(("From", first(request_headers, "from")))
    to = first(request_headers, "to")
    if to_tag and ";tag=" not in to:
        to += f";tag={to_tag}"
    headers.append(("To", to))
    headers.append(("Call-ID", first(request_headers, "call-id")))
    headers.append(("CSeq", first(request_headers, "cseq")))
    headers.extend(extra)
    return build(f"SIP/2.0 {code} {reason}", headers)


def log(line):
    print(line, flush=True)


# ---------------------------------------------------------------------------
# serve: the callees
# ---------------------------------------------------------------------------


class PendingOk:
    """A 200 to INVITE we keep retransmitting until the ACK arrives."""

    def __init__(self, sock, data, dest):
        self.sock, self.data, self.dest = sock, data, dest
        self.interval = T1
        self.next_at = time.monotonic() + T1
        self.give_up_at = time.monotonic() + 64 * T1


def serve(args):
    users = args.users.split(",")
    ring = dict(item.split("=", 1) for item in args.ring.split(",") if "=" in item)
    sockets = {}
    for index, user in enumerate(users):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, args.base_port + index))
        sockets[sock] = user
    log(f"READY {len(sockets)} users from port {args.base_port}")
    pending = {}  # call-id -> PendingOk
    delayed = []  # (send_at, sock, data, dest, call_id)
    dialogs = {}  # call-id -> to tag (so a retransmitted INVITE gets the same)
    while True:
        now = time.monotonic()
        waits = [p.next_at for p in pending.values()] + [d[0] for d in delayed]
        timeout = max(0.0, min(waits) - now) if waits else 1.0
        readable, _, _ = select.select(list(sockets), [], [], min(timeout, 1.0))
        for sock in readable:
            try:
                data, source = sock.recvfrom(65535)
            except OSError:
                continue
            message = parse(data)
            if not message:
                continue
            start, headers, _ = message
            if start.startswith("SIP/2.0"):
                continue  # the callee sends no requests, so it expects no responses
            method = start.split(" ", 1)[0]
            user = sockets[sock]
            call_id = first(headers, "call-id")
            vias = values(headers, "via")
            log(f"RECV {method} user={user} call_id={call_id} vias={len(vias)}")
            # Responses go back to the top Via's sent-by (rport: the source).
            dest = source
            if method == "INVITE":
                tag = dialogs.setdefault(call_id, token("uas"))
                contact = f"<sip:{user}@{HOST}:{sock.getsockname()[1]}>"
                rr = [("Record-Route", r) for r in values(headers, "record-route")]
                sock.sendto(response(headers, 100, "Trying"), dest)
                sock.sendto(response(headers, 180, "Ringing", tag, [("Contact", contact)] + rr), dest)
                ok = response(headers, 200, "OK", tag, [("Contact", contact)] + rr)
                delay = float(ring.get(user, "0"))
                delayed.append((time.monotonic() + delay, sock, ok, dest, call_id))
            elif method == "ACK":
                pending.pop(call_id, None)
            elif method in ("BYE", "OPTIONS", "CANCEL", "INFO"):
                sock.sendto(response(headers, 200, "OK", dialogs.get(call_id) or token("uas")), dest)
            else:
                sock.sendto(response(headers, 405, "Method Not Allowed", token("uas")), dest)
        now = time.monotonic()
        for item in [d for d in delayed if d[0] <= now]:
            delayed.remove(item)
            _, sock, data, dest, call_id = item
            sock.sendto(data, dest)
            pending[call_id] = PendingOk(sock, data, dest)
        for call_id, ok in list(pending.items()):
            if now >= ok.give_up_at:
                log(f"NOACK call_id={call_id}")
                del pending[call_id]
            elif now >= ok.next_at:
                ok.sock.sendto(ok.data, ok.dest)
                ok.interval = min(ok.interval * 2, 4.0)
                ok.next_at = now + ok.interval


# ---------------------------------------------------------------------------
# client side: register and call
# ---------------------------------------------------------------------------


class Client:
    """One UDP socket that sends requests to the LB and reads the answers."""

    def __init__(self, lb):
        host, _, port = lb.partition(":")
        self.lb = (host, int(port))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]

    def via(self):
        return ("Via", f"SIP/2.0/UDP {HOST}:{self.port};branch={token('z9hG4bK')};rport")

    def transact(self, data, call_id, cseq_method, timeout, want_final=True, seen=None, dest=None):
        """Send DATA (retransmitting on T1 doubling until any response, as UDP
        asks) and return the first response to it that is final, or the first
        at all when WANT_FINAL is false. Provisional codes go into SEEN."""
        deadline = time.monotonic() + timeout
        interval, next_send = T1, time.monotonic() + T1
        got_any = False
        dest = dest or self.lb
        self.sock.sendto(data, dest)
        while True:
            now = time.monotonic()
            if now >= deadline:
                return None
            if not got_any and now >= next_send:
                self.sock.sendto(data, dest)
                interval = min(interval * 2, 4.0)
                next_send = now + interval
            wait = min(deadline, next_send if not got_any else deadline) - now
            readable, _, _ = select.select([self.sock], [], [], max(wait, 0.01))
            if not readable:
                continue
            raw, _ = self.sock.recvfrom(65535)
            message = parse(raw)
            if not message:
                continue
            start, headers, _ = message
            code = status_of(start)
            if code is None:
                continue
            if first(headers, "call-id") != call_id or not first(headers, "cseq").endswith(cseq_method):
                continue
            got_any = True
            if code < 200:
                if seen is not None:
                    seen.append(code)
                if not want_final:
                    return message
                continue
            return message


def register(args):
    users = args.users.split(",")
    only = set(args.only.split(",")) if args.only else set(users)
    client = Client(args.lb)
    failed = 0
    for index, user in enumerate(users):
        if user not in only:
            continue
        call_id = token("reg")
        contact = f"<sip:{user}@{HOST}:{args.base_port + index}>"
        aor = f"sip:{user}@{args.domain}"
        data = build(
            f"REGISTER sip:{args.domain} SIP/2.0",
            [
                client.via(),
                ("Max-Forwards", "70"),
                ("From", f"<{aor}>;tag={token('f')}"),
                ("To", f"<{aor}>"),
                ("Call-ID", call_id),
                ("CSeq", "1 REGISTER"),
                ("Contact", contact),
                ("Expires", str(args.expires)),
            ],
        )
        reply = client.transact(data, call_id, "REGISTER", args.timeout)
        code = status_of(reply[0]) if reply else None
        log(f"REGISTER {user} {code if code else 'timeout'}")
        if code != 200:
            failed += 1
    return 1 if failed else 0


def call(args):
    """Call each user in turn; exit 0 only if every call ended as expected."""
    failed = 0
    for user in args.user.split(","):
        line, final, bye = call_one(args, user)
        log(line)
        if final != args.expect or (final == 200 and bye != 200):
            failed += 1
    return 1 if failed else 0


def call_one(args, user):
    """One call to USER: (summary line, final code or None, BYE code or None)."""
    client = Client(args.lb)
    call_id = token("call")
    from_tag = token("f")
    target = f"sip:{user}@{args.domain}"
    caller = f"sip:caller@{HOST}:{client.port}"
    sdp = (
        "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
        "t=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    invite_via = client.via()
    common = [
        ("Max-Forwards", "70"),
        ("From", f"<{caller}>;tag={from_tag}"),
    ]
    invite = build(
        f"INVITE {target} SIP/2.0",
        [invite_via]
        + common
        + [
            ("To", f"<{target}>"),
            ("Call-ID", call_id),
            ("CSeq", "1 INVITE"),
            ("Contact", f"<{caller}>"),
            ("Content-Type", "application/sdp"),
        ],
        sdp,
    )
    provisional = []
    reply = client.transact(invite, call_id, "INVITE", args.timeout, seen=provisional)
    if not reply:
        return f"CALL {user} call_id={call_id} provisional={provisional} final=timeout", None, None
    start, headers, _ = reply
    final = status_of(start)
    summary = f"CALL {user} call_id={call_id} provisional={provisional} final={final}"
    if final != 200:
        # A non-2xx final is ACKed hop by hop by the proxy; nothing more to do.
        return summary, final, None
    to = first(headers, "to")
    remote_target = angle_uri(first(headers, "contact"))
    # UAC route set: the Record-Route list of the 2xx, reversed (RFC 3261 12.1.2).
    routes = list(reversed(values(headers, "record-route")))
    route_headers = [("Route", r) for r in routes]
    # Loose routing: send to the first Route's address (the LB), R-URI = target.
    next_hop = uri_address(angle_uri(routes[0])) if routes else uri_address(remote_target)
    in_dialog = [("To", to), ("Call-ID", call_id)]
    ack = build(
        f"ACK {remote_target} SIP/2.0",
        [client.via()] + common + in_dialog + [("CSeq", "1 ACK")] + route_headers,
    )
    client.sock.sendto(ack, next_hop)
    if args.hold:
        time.sleep(args.hold)
    bye = build(
        f"BYE {remote_target} SIP/2.0",
        [client.via()] + common + in_dialog + [("CSeq", "2 BYE")] + route_headers,
    )
    bye_reply = client.transact(bye, call_id, "BYE", args.timeout, dest=next_hop)
    bye_code = status_of(bye_reply[0]) if bye_reply else None
    return f"{summary} routes={len(routes)} bye={bye_code or 'timeout'}", final, bye_code


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="answer calls for USERS")
    p_serve.add_argument("--users", required=True, help="comma-separated user names")
    p_serve.add_argument("--base-port", type=int, required=True)
    p_serve.add_argument("--ring", default="", help="user=seconds,... to wait before the 200")
    p_reg = sub.add_parser("register", help="REGISTER USERS through the LB")
    p_reg.add_argument("--lb", required=True, help="host:port of the front LB")
    p_reg.add_argument("--domain", default="example.com")
    p_reg.add_argument("--users", required=True)
    p_reg.add_argument("--base-port", type=int, required=True)
    p_reg.add_argument("--only", default="", help="register just these of USERS")
    p_reg.add_argument("--expires", type=int, default=3600)
    p_reg.add_argument("--timeout", type=float, default=8.0)
    p_call = sub.add_parser("call", help="call USER through the LB")
    p_call.add_argument("--lb", required=True)
    p_call.add_argument("--domain", default="example.com")
    p_call.add_argument("--user", required=True, help="user, or comma-separated users")
    p_call.add_argument("--expect", type=int, default=200, help="final code that counts as success")
    p_call.add_argument("--hold", type=float, default=0.0, help="seconds between ACK and BYE")
    p_call.add_argument("--timeout", type=float, default=8.0)
    args = parser.parse_args()
    if args.command == "serve":
        try:
            serve(args)
        except KeyboardInterrupt:
            return 0
        return 0
    if args.command == "register":
        return register(args)
    return call(args)


if __name__ == "__main__":
    sys.exit(main())
