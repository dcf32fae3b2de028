"""Lua scripts: each one a `.lua` file in the `scripts/` folder of the package that runs it
(relay.store's unless told), read once, after the shared Lua it needs (its preludes), and
registered with Redis by the digest of that text (redis-py sends it again only when Redis has
lost it)."""

from __future__ import annotations

from functools import cache
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

STORE = "relay.store"


@cache
def source(name: str, package: str = STORE) -> str:
    """The file `scripts/{name}.lua` of `package`, as written."""
    return (resources.files(package) / "scripts" / f"{name}.lua").read_text()


def assemble(body: str, *preludes: str) -> str:
    """`body` after `preludes`; its `#!lua flags=…` line, if any, stays first (Redis reads the
    flags only on the script's first line)."""
    shebang = body.partition("\n")[0] + "\n" if body.startswith("#!") else ""
    return shebang + "".join(preludes) + body.removeprefix(shebang)


@cache
def text(name: str, *preludes: str, package: str = STORE) -> str:
    """The whole text of one script: its preludes, then its file."""
    return assemble(source(name, package), *preludes)


def register(redis: Redis, name: str, *preludes: str, package: str = STORE) -> AsyncScript:
    """One script, callable with its KEYS and ARGV."""
    return redis.register_script(text(name, *preludes, package=package))
