"""Lua scripts: each one a `.lua` file in the `scripts/` folder of the package that runs it
(relay.store's unless told), read once, after the shared Lua it needs (its preludes, and
Redis's clock if it reads it), and registered with Redis by the digest of that whole text
(redis-py sends it again only when Redis has lost it; a process whose Lua differs, in its file
or in what is generated for it, never runs another's)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

STORE = "relay.store"

# Redis's clock in ms, for the scripts that read it: no script reads TIME itself.
_TIME_MS = """local function time_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""
# A Lua name: a letter or underscore, then those or digits, but no Lua keyword.
_LUA_NAME = re.compile(
    r"(?!(and|break|do|else|elseif|end|false|for|function|if|in|local|nil|not|or|repeat|return"
    r"|then|true|until|while)$)[A-Za-z_][A-Za-z0-9_]*"
)


@cache
def source(name: str, package: str = STORE) -> str:
    """The file `scripts/{name}.lua` of `package`, as written."""
    return (resources.files(package) / "scripts" / f"{name}.lua").read_text()


def assemble(body: str, *preludes: str) -> str:
    """`body` after `preludes`; its `#!lua flags=…` line, if any, stays first (Redis reads the
    flags only on the script's first line)."""
    shebang = body.partition("\n")[0] + "\n" if body.startswith("#!") else ""
    return shebang + "".join(preludes) + body.removeprefix(shebang)


def clock(body: str, given: str | None = None) -> str:
    """The Lua giving `body` Redis's clock, if it reads it: `time_ms()`, a TIME call, and NOW,
    set once before the body runs from `given` (a Lua expression: the caller's reading of Redis's
    clock, nil or null when it has none) or else from TIME. Empty for a script that reads
    neither: a TIME call is a command like any other, which the scripts that do not need it are
    spared."""
    if re.search(r"\bNOW\b", body) is None:
        return _TIME_MS if re.search(r"\btime_ms\b", body) else ""
    if given is None:
        return _TIME_MS + "local NOW = time_ms()\n"
    return (
        f"{_TIME_MS}local NOW = {given}\n"
        "if NOW == nil or NOW == cjson.null then NOW = time_ms() end\n"
    )


def names(table: str, values: Iterable[str]) -> str:
    """A Lua table `table` naming each of `values` after itself, so that scripts spell names
    declared in Python as `table.name` (generated from that declaration) rather than as
    literals that could drift from it."""
    fields = []
    for value in values:
        if not _LUA_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is no Lua name")
        fields.append(f"{value} = '{value}'")
    return f"local {table} = {{{', '.join(fields)}}}\n"


@cache
def text(name: str, *preludes: str, package: str = STORE, now: str | None = None) -> str:
    """The whole text of one script: its preludes, Redis's clock if it reads it (`now`: the
    caller's reading of it, as `clock` takes it), then its file."""
    body = source(name, package)
    return assemble(body, *preludes, clock(body, now))


def register(redis: Redis, name: str, *preludes: str, package: str = STORE) -> AsyncScript:
    """One script, callable with its KEYS and ARGV."""
    return redis.register_script(text(name, *preludes, package=package))
