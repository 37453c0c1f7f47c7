"""The `siphon` module of routing scripts.

The real module lives inside the siphon daemon (and `siphon route`), which
puts it in `sys.modules` before it runs a script. This package carries its
type stubs (`__init__.pyi`, for editors, mypy and pyright) and
`siphon.testing`, which runs a script offline through the daemon's own code.
Outside the daemon, the script API itself is not available.
"""


def __getattr__(name: str) -> object:
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        f"siphon.{name} exists only inside the siphon daemon; "
        "to run a script offline, use siphon.testing.Harness"
    )
