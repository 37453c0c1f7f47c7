#!/usr/bin/env python3
"""Probes validate.sh uses to read the nodes (python3 standard library only).

  http METHOD URL [BODY]              print the status code, then the body
  status URL                          print the status code of GET URL
  wait-http URL CODE SECONDS          wait until GET URL answers CODE
  wait-log FILE REGEX SECONDS         wait until a line of FILE matches REGEX
  lb-dest LB_LOG METHOD USER          the backend the LB's last `LB METHOD
                                      sip:USER@...` line names (e.g. backend1)
  placement LB_LOG ADMIN_MAP USERS    for each user: the backend the LB named
                                      for its REGISTER holds the binding and
                                      the others do not; prints `user backend`
  wait-health LB_ADMIN URI up|down S  wait until the LB's /admin/gateways shows
                                      destination URI healthy (up) or not
  free-ports [HOST:]PORT...           fail when any port is taken (UDP or TCP;
                                      HOST defaults to 127.0.0.1)

ADMIN_MAP is `backend1=127.0.0.1:61411,backend2=127.0.0.1:61412`. A backend's
name is the first label of its destination uri (sip:backend1.example.com).
Exit code 0 on success; on failure a reason is printed to stderr.
"""

import json
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def http(method, url, body=None, timeout=3.0):
    """(status, body text); status 0 when nothing answered."""
    data = body.encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")
    except (OSError, ValueError) as error:
        return 0, str(error)


def lb_lines(path, method):
    """(user, backend) for every `LB METHOD sip:user@host -> sip:name...` line."""
    pattern = re.compile(rf"LB {method} <?sips?:([^@>\s]+)@\S*\s+->\s+sips?:([^.:;>\s]+)")
    found = []
    with open(path, encoding="utf-8", errors="replace") as log:
        for line in log:
            match = pattern.search(line)
            if match:
                found.append((match.group(1), match.group(2)))
    return found


def last_dest(path, method, user):
    dest = None
    for who, backend in lb_lines(path, method):
        if who == user:
            dest = backend
    return dest


def bindings(admin, user, domain="example.com"):
    """The contact URIs a node's admin API lists for sip:user@domain, or None."""
    aor = urllib.parse.quote(f"sip:{user}@{domain}", safe=":@")
    status, body = http("GET", f"http://{admin}/admin/registrations/{aor}")
    if status != 200:
        return None
    try:
        return [b.get("uri", "") for b in json.loads(body).get("bindings", [])]
    except (ValueError, AttributeError):
        return None


def placement(lb_log, admin_map, users):
    admins = dict(item.split("=", 1) for item in admin_map.split(","))
    ok = True
    for user in users.split(","):
        dest = last_dest(lb_log, "REGISTER", user)
        if dest not in admins:
            print(f"{user}: the LB log names no known backend for its REGISTER ({dest})", file=sys.stderr)
            ok = False
            continue
        for name, admin in sorted(admins.items()):
            held = bindings(admin, user)
            if held is None:
                print(f"{user}: {name}'s admin API did not answer", file=sys.stderr)
                ok = False
            elif name == dest and not held:
                print(f"{user}: the LB sent it to {name}, which holds no binding", file=sys.stderr)
                ok = False
            elif name != dest and held:
                print(f"{user}: {name} holds {held} but the LB sent it to {dest}", file=sys.stderr)
                ok = False
        print(f"{user} {dest}")
    return ok


def destination_healthy(lb_admin, uri):
    status, body = http("GET", f"http://{lb_admin}/admin/gateways")
    if status != 200:
        return None
    try:
        for group in json.loads(body).get("groups", []):
            for dest in group.get("destinations", []):
                if dest.get("uri") == uri:
                    return bool(dest.get("healthy"))
    except (ValueError, AttributeError):
        return None
    return None


def port_taken(where):
    host, _, port = where.rpartition(":")
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        sock = socket.socket(socket.AF_INET, kind)
        # As the daemons do: a port left in TIME_WAIT by a previous run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or "127.0.0.1", int(port)))
        except OSError:
            return True
        finally:
            sock.close()
    return False


def wait(seconds, predicate):
    deadline = time.monotonic() + seconds
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    command, args = argv[1], argv[2:]
    if command == "http" and len(args) in (2, 3):
        status, body = http(args[0], args[1], args[2] if len(args) == 3 else None)
        print(status)
        print(body)
        return 0 if status else 1
    if command == "status" and len(args) == 1:
        print(http("GET", args[0])[0])
        return 0
    if command == "wait-http" and len(args) == 3:
        url, code, seconds = args[0], int(args[1]), float(args[2])
        last = []
        ok = wait(seconds, lambda: last.append(http("GET", url, timeout=1.0)) or last[-1][0] == code)
        if not ok:
            print(f"GET {url}: wanted {code}, last answer {last[-1] if last else None}", file=sys.stderr)
        return 0 if ok else 1
    if command == "wait-log" and len(args) == 3:
        path, pattern, seconds = args[0], re.compile(args[1]), float(args[2])

        def matched():
            try:
                with open(path, encoding="utf-8", errors="replace") as log:
                    return any(pattern.search(line) for line in log)
            except OSError:
                return False

        return 0 if wait(seconds, matched) else 1
    if command == "lb-dest" and len(args) == 3:
        dest = last_dest(args[0], args[1], args[2])
        if not dest:
            print(f"no `LB {args[1]}` line for {args[2]} in {args[0]}", file=sys.stderr)
            return 1
        print(dest)
        return 0
    if command == "placement" and len(args) == 3:
        return 0 if placement(*args) else 1
    if command == "wait-health" and len(args) == 4:
        lb_admin, uri, want, seconds = args[0], args[1], args[2] == "up", float(args[3])
        ok = wait(seconds, lambda: destination_healthy(lb_admin, uri) is want)
        if not ok:
            print(f"{uri} did not turn {args[2]} within {seconds}s", file=sys.stderr)
        return 0 if ok else 1
    if command == "free-ports" and args:
        taken = [p for p in args if port_taken(p)]
        if taken:
            print(f"ports already in use: {' '.join(taken)}", file=sys.stderr)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
