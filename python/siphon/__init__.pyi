# Type stubs for the `siphon` module that the siphon daemon embeds in its
# Python interpreter (PEP 561). Kept in step with the daemon by a test
# (src/script/stubs.rs) that compares every name and signature here with
# what the running module exposes.
from typing import Callable, Iterable, Mapping, Optional, TypeVar, Union, overload

_Handler = TypeVar("_Handler", bound=Callable[..., object])

class Uri:
    """A SIP URI as scripts see it; `str()` gives the URI text."""

    @property
    def scheme(self) -> str: ...
    @property
    def user(self) -> Optional[str]: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> Optional[int]: ...
    @property
    def is_local(self) -> bool:
        """The host (and port) name this proxy or one of `domain.local`."""
    @property
    def aor(self) -> Optional[str]:
        """`scheme:user@host[:port]`, lower-case host, no parameters."""

class Destination:
    """A gateway destination, as `gateway.select` picks it. `bool(d)` is
    `d.healthy`; `str(d)` is `d.uri`."""

    @property
    def uri(self) -> str: ...
    @property
    def address(self) -> str:
        """Where packets go, `ip:port`."""
    @property
    def weight(self) -> int: ...
    @property
    def attrs(self) -> dict[str, str]: ...
    @property
    def healthy(self) -> bool: ...
    @property
    def group(self) -> str: ...
    @property
    def priority(self) -> int:
        """Its tier: lower tiers take calls first."""
    @property
    def active_calls(self) -> int:
        """Calls established through it (2xx seen, no BYE yet), counted
        in the core when the snapshot was taken."""
    @property
    def max_calls(self) -> Optional[int]: ...
    @property
    def max_cps(self) -> Optional[float]: ...
    @property
    def draining(self) -> bool: ...
    def __bool__(self) -> bool: ...

class Contact:
    """A registered contact; `str(contact)` is its URI."""

    @property
    def uri(self) -> str: ...
    @property
    def q(self) -> float: ...
    @property
    def expires(self) -> int:
        """Seconds left."""
    @property
    def path(self) -> list[str]: ...

class Response:
    """The final response `@proxy.on_failure` gets."""

    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> str: ...
    def header(self, name: str) -> Optional[str]: ...

_Target = Union[str, Uri, Destination, Contact]

class Request:
    """The request a handler decides on. Its methods record what to do; the
    proxy carries it out once the handler returns."""

    @property
    def method(self) -> str: ...
    @property
    def ruri(self) -> Uri: ...
    @property
    def to_uri(self) -> Optional[Uri]: ...
    @property
    def from_uri(self) -> Optional[Uri]: ...
    @property
    def call_id(self) -> str: ...
    @property
    def cseq(self) -> int: ...
    @property
    def in_dialog(self) -> bool:
        """The To header has a tag."""
    @property
    def source_ip(self) -> str: ...
    @property
    def source_port(self) -> int: ...
    @property
    def source_trusted(self) -> bool:
        """The source address is in `security.trusted`."""
    @property
    def source_group(self) -> Optional[str]:
        """The first gateway group (by name) with a destination at the
        source's IP and port, or None (a backend's or carrier's traffic)."""
    @property
    def transport(self) -> str:
        """`udp`, `tcp`, `tls`, `ws` or `wss`."""
    @property
    def auth_user(self) -> Optional[str]:
        """The user `auth.check` authenticated."""
    def header(self, name: str) -> Optional[str]: ...
    def set_header(self, name: str, value: str) -> None: ...
    def remove_header(self, name: str) -> None: ...
    def loose_route(self) -> bool:
        """True when the request has a route set to follow (RFC 3261 16.4)."""
    def relay(self, uri: Optional[_Target] = None) -> None:
        """Forward, to `uri`, else along the Route set, else to the Request-URI."""
    def reply(self, code: int, reason: Optional[str] = None) -> None: ...
    def fork(self, targets: Iterable[_Target]) -> None:
        """Parallel forking: one branch per target."""
    def record_route(self) -> None: ...
    def capture(self, on: bool) -> None:
        """`capture(False)` keeps this request's call out of `capture.hep`
        (for example OPTIONS pings); `capture(True)` puts it back."""

class _Proxy:
    @overload
    def on_request(self, target: _Handler) -> _Handler: ...
    @overload
    def on_request(self, target: str) -> Callable[[_Handler], _Handler]: ...
    def on_failure(self, func: _Handler) -> _Handler: ...

class _Gateway:
    def select(
        self,
        group: str,
        key: Union[str, bytes, Uri, None] = None,
        attrs: Optional[Mapping[str, str]] = None,
    ) -> Optional[Destination]: ...
    def mark_down(self, group: str, uri: str) -> bool: ...
    def mark_up(self, group: str, uri: str) -> bool: ...
    def is_from(self, group: str, request: Request, any_port: bool = False) -> bool:
        """The request came from one of the group's destinations (its IP,
        and port unless `any_port`), as Kamailio's `ds_is_from_list`."""
    def on_change(self, func: _Handler) -> _Handler:
        """Decorates a function called `(group, uri, old_state,
        new_state, reason)` on every change of a destination's state (`up`,
        `down`, `draining`, `full`), off the SIP path."""
    def drain(self, group: str, uri: str) -> bool:
        """No new requests for `uri`; its calls go on."""
    def undrain(self, group: str, uri: str) -> bool: ...
    def add_group(
        self,
        name: str,
        destinations: Iterable[Mapping[str, object]],
        algorithm: str = "weighted",
        probe: Optional[Mapping[str, object]] = None,
        failover: Optional[Mapping[str, object]] = None,
        passive: Optional[Mapping[str, object]] = None,
        max_retry_after_secs: Optional[int] = None,
        spill_threshold: int = 1,
        hash_bound: Optional[float] = None,
    ) -> None: ...
    def remove_group(self, name: str) -> bool: ...
    def groups(self) -> list[str]: ...
    def list(self, group: str) -> list[Destination]: ...

class _Registrar:
    def save(self, request: Request) -> int: ...
    def lookup(self, uri: Union[str, Uri]) -> list[Contact]: ...
    def count(self) -> int: ...

class _Auth:
    @property
    def enabled(self) -> bool: ...
    @property
    def realm(self) -> Optional[str]: ...
    def check(self, request: Request) -> bool: ...

class _Log:
    def debug(self, msg: str) -> None: ...
    def info(self, msg: str) -> None: ...
    def warning(self, msg: str) -> None: ...
    def warn(self, msg: str) -> None: ...
    def error(self, msg: str) -> None: ...

proxy: _Proxy
gateway: _Gateway
registrar: _Registrar
auth: _Auth
log: _Log
