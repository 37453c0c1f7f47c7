"""Run a routing script offline, with the daemon's own code, and look at its
decisions: no sockets, no sipp.

    from siphon.testing import Harness

    h = Harness("config/lb.yaml")       # the config, and the script it names
    d = h.request("INVITE", ruri="sip:bob@example.com")
    assert d.action == "relay" and d.uri == "sip:backend1.example.com"
    h.mark_down("backends", d.uri)      # then see where the failover goes

A Harness drives `siphon route --serve`, the siphon binary itself: the
config is loaded and checked as the daemon loads it, the script runs in the
daemon's interpreter with the real `siphon` module, and gateway selection is
the daemon's code (the same hash, weights, rotation, attrs and health). The
registrar is in memory (seed it with `register`); nothing is read from Redis
and no name is looked up in DNS.

The binary is `$SIPHON_BIN`, else the newest `target/release/siphon` or
`target/debug/siphon` above the config or the current directory, else
`siphon` on PATH.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

__all__ = ["Harness", "Decision", "HarnessError", "find_siphon"]


DEFAULT_SOURCE = "192.0.2.10:5060"


def name_addr(value: str) -> str:
    """A bare URI in brackets; a name-addr as written."""
    return value if "<" in value else f"<{value}>"


class HarnessError(Exception):
    """The binary could not start, refused the config, or a request was bad."""


class Decision:
    """What the script decided for one request, as the proxy would carry it
    out. `action` is "relay", "reply", "fork" or "none"."""

    def __init__(self, fields: Mapping[str, Any]):
        self.fields: dict[str, Any] = dict(fields)
        self.action: str = fields.get("action", "none")
        # relay
        self.uri: Optional[str] = fields.get("uri")
        self.address: Optional[str] = fields.get("address")
        self.transport: Optional[str] = fields.get("transport")
        self.group: Optional[str] = fields.get("group")
        self.candidates: list[dict[str, str]] = list(fields.get("candidates", []))
        self.host: Optional[str] = fields.get("host")
        # reply
        self.code: Optional[int] = fields.get("code")
        self.reason: Optional[str] = fields.get("reason")
        self.headers: list[tuple[str, str]] = [(h[0], h[1]) for h in fields.get("headers", [])]
        self.script_error: bool = bool(fields.get("script_error", False))
        # "core" when the proxy core answers by itself (a CANCEL with no
        # transaction, Max-Forwards 0, an INVITE left without action, a next
        # hop it cannot use: next_hop_error says why).
        self.by: Optional[str] = fields.get("by")
        self.next_hop_error: Optional[str] = fields.get("next_hop_error")
        # fork
        self.targets: list[dict[str, Any]] = list(fields.get("targets", []))
        # every action
        self.record_route: bool = bool(fields.get("record_route", False))
        # request.capture(...): None when the script did not call it.
        self.capture: Optional[bool] = fields.get("capture")
        self.new_ruri: Optional[str] = fields.get("new_ruri")
        self.headers_set: dict[str, str] = {name: value for name, value in fields.get("headers_set", [])}
        self.headers_removed: list[str] = list(fields.get("headers_removed", []))

    @property
    def failover(self) -> list[str]:
        """The uris a gateway relay fails over to, in order (the first is `uri`)."""
        return [c["uri"] for c in self.candidates]

    def __repr__(self) -> str:
        return f"Decision({json.dumps(self.fields, sort_keys=True)})"


def find_siphon(start: Optional[Path] = None) -> str:
    """The siphon binary the harness runs: `$SIPHON_BIN`, else the newest
    `target/{release,debug}/siphon` above `start` or the current directory
    (a fresh build in a checkout), else `siphon` on PATH."""
    named = os.environ.get("SIPHON_BIN")
    if named:
        return named
    built: list[Path] = []
    for top in [start, Path.cwd()]:
        if top is None:
            continue
        for directory in [top.resolve(), *top.resolve().parents]:
            for profile in ("release", "debug"):
                candidate = directory / "target" / profile / "siphon"
                if candidate.is_file() and os.access(candidate, os.X_OK):
                    built.append(candidate)
    if built:
        return str(max(built, key=lambda p: p.stat().st_mtime))
    on_path = shutil.which("siphon")
    if on_path:
        return on_path
    raise HarnessError(
        "no siphon binary: build it (cargo build), put it on PATH, or set SIPHON_BIN"
    )


class Harness:
    """A script and its config, loaded by the siphon binary, answering
    requests one at a time. Use it as a context manager, or call `close()`."""

    def __init__(self, config: str | os.PathLike[str], binary: Optional[str] = None):
        self.config = Path(config)
        if not self.config.is_file():
            raise HarnessError(f"no config file {self.config}")
        self.binary = binary or find_siphon(self.config.parent)
        env = dict(os.environ)
        env.setdefault("NO_COLOR", "1")
        try:
            self._process = subprocess.Popen(
                [self.binary, "route", "--config", str(self.config), "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,  # the script's log lines and tracebacks, as the daemon logs them
                text=True,
                encoding="utf-8",
                env=env,
            )
        except OSError as error:
            raise HarnessError(f"cannot run {self.binary}: {error}") from error
        first = self._read()
        if first is None or not first.get("ready"):
            code = self._process.wait()
            raise HarnessError(
                f"{self.binary} did not load {self.config} (exit code {code}); its message is above"
            )

    # -- requests ----------------------------------------------------------

    def run(self, sip: str, source: str = DEFAULT_SOURCE, transport: str = "udp") -> Decision:
        """The decision for a raw SIP request (LF line ends are fine)."""
        return Decision(self._ask({"op": "route", "sip": sip, "source": source, "transport": transport}))

    def request(
        self,
        method: str,
        ruri: str,
        to: Optional[str] = None,
        from_: str = "sip:caller@example.net",
        headers: Optional[Mapping[str, str] | Sequence[tuple[str, str]]] = None,
        body: str = "",
        to_tag: Optional[str] = None,
        route: Iterable[str] = (),
        source: str = DEFAULT_SOURCE,
        transport: str = "udp",
        call_id: Optional[str] = None,
        cseq: int = 1,
        max_forwards: int = 70,
    ) -> Decision:
        """Builds a request (see `build`, which takes the same fields) and runs it."""
        text = self.build(
            method, ruri, to, from_, headers, body, to_tag, route, source, transport, call_id, cseq, max_forwards
        )
        return self.run(text, source=source, transport=transport)

    def run_failure(
        self,
        sip: str,
        status: Optional[int] = None,
        source: str = DEFAULT_SOURCE,
        transport: str = "udp",
    ) -> Decision:
        """What `@proxy.on_failure` decides for a relayed request whose
        branches all ended with `status` (None: they timed out). Without
        such a handler: action "none" (the best response goes upstream)."""
        request = {"op": "failure", "sip": sip, "status": status, "source": source, "transport": transport}
        return Decision(self._ask(request))

    @staticmethod
    def build(
        method: str,
        ruri: str,
        to: Optional[str] = None,
        from_: str = "sip:caller@example.net",
        headers: Optional[Mapping[str, str] | Sequence[tuple[str, str]]] = None,
        body: str = "",
        to_tag: Optional[str] = None,
        route: Iterable[str] = (),
        source: str = DEFAULT_SOURCE,
        transport: str = "udp",
        call_id: Optional[str] = None,
        cseq: int = 1,
        max_forwards: int = 70,
    ) -> str:
        """The text of a request. `to` defaults to the Request-URI; `to` and
        `from_` may be URIs or name-addrs; `to_tag` makes it in-dialog;
        `route` adds Route headers in order."""
        host, _, port = source.rpartition(":")
        branch = f"z9hG4bK{random.getrandbits(48):012x}"
        call_id = call_id or f"harness-{random.getrandbits(48):012x}"
        to_value = name_addr(to or ruri) + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/{transport.upper()} {host}:{port};branch={branch};rport",
            f"Max-Forwards: {max_forwards}",
            f"From: {name_addr(from_)};tag=harness",
            f"To: {to_value}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
        ]
        lines += [f"Route: {hop}" for hop in route]
        pairs = headers.items() if isinstance(headers, Mapping) else (headers or [])
        lines += [f"{name}: {value}" for name, value in pairs]
        if method == "INVITE" and not any(line.lower().startswith("contact:") for line in lines):
            lines.append(f"Contact: {name_addr(from_)}")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    # -- state -------------------------------------------------------------

    def mark_down(self, group: str, uri: str) -> None:
        """Holds a destination down, as the admin API does."""
        self._ask({"op": "mark", "group": group, "uri": uri, "down": True})

    def mark_up(self, group: str, uri: str) -> None:
        self._ask({"op": "mark", "group": group, "uri": uri, "down": False})

    def register(
        self, aor: str, contact: str, expires: int = 3600, path: Sequence[str] = ()
    ) -> int:
        """Seeds the registrar (a REGISTER of `contact` for `aor`); the status."""
        answer = self._ask(
            {"op": "register", "aor": aor, "contact": contact, "expires": expires, "path": list(path)}
        )
        return int(answer["code"])

    def select(self, group: str, key: Optional[str] = None) -> list[str]:
        """The uris `key` gets in `group`, best first (what gateway.select ranks)."""
        answer = self._ask({"op": "select", "group": group, "key": key})
        return [entry["uri"] for entry in answer["ranking"]]

    # -- plumbing ----------------------------------------------------------

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            process.kill()

    def _read(self) -> Optional[dict[str, Any]]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        return json.loads(line) if line else None

    def _ask(self, request: Mapping[str, Any]) -> dict[str, Any]:
        if self._process.poll() is not None:
            raise HarnessError(f"{self.binary} has exited")
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            answer = self._read()
        except (OSError, ValueError) as error:
            raise HarnessError(f"{self.binary} stopped answering: {error}") from error
        if answer is None:
            raise HarnessError(f"{self.binary} stopped answering")
        if "error" in answer:
            raise HarnessError(str(answer["error"]))
        return answer
