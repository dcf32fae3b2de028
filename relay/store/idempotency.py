"""Stored responses for Idempotency-Key: claim, then the answer is stored with the write.

A record is `pending` while a request runs (with a lease and the run's random token), `unknown`
when that run failed, and `done` with the response to replay. A write that answers a request
checks, in its own atomic step, that the record is still its run's pending claim, and sets the
`done` record there too (a `Commit`): so a write that committed always left its answer, and a
record still `pending` after its lease, or `unknown`, means its run wrote nothing that can land
later — a retry may claim the key and run again. Responses can carry secrets shown once (webhook
secrets, API tokens), so they are stored encrypted under the master keyring, bound to the
record's key.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from string import Template
from typing import Generic, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from relay.errors import Conflict, Invalid
from relay.secrets import Keyring, SecretDecryptionError
from relay.store import codec, keys, lua
from relay.store.gathering import Gathering
from relay.store.replicas import Replicas

KEEP_SECONDS = 24 * 3600
# How a commit that finds its claim gone fails, from Lua or from Python.
CLAIM_MOVED = "CLAIMMOVED"

T = TypeVar("T")

# The Lua helpers of every script that checks or commits a claim (see holds.lua, commit.lua).
HOLDS = lua.source("holds")
COMMIT = HOLDS + Template(lua.source("commit")).substitute(
    CLAIM_MOVED=CLAIM_MOVED, KEEP_SECONDS=KEEP_SECONDS
)


def _digest(idempotency_key: str) -> str:
    return hashlib.sha256(idempotency_key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response to replay for a repeated key."""

    status: int
    headers: dict[str, str]
    body: bytes


class ClaimMoved(Conflict):
    """The run's claim is gone (its lease lapsed and a retry took the key): it wrote nothing."""

    def __init__(self) -> None:
        super().__init__(
            "A later request with this Idempotency-Key took it over while this one ran; "
            "this one changed nothing."
        )


@dataclass(slots=True)
class Commit(Generic[T]):
    """A request's answer, stored by the write that produces it, in the same atomic step.

    The write first checks that `key` is still `run`'s pending claim (else it writes nothing),
    then sets `seal(result)`: the `done` record answering the write's result. A caller that
    learns its write stored the answer says so (`landed`): the request's answer then needs no
    storing again once it is sent (see `IdempotencyStore.complete`).
    """

    key: str
    run: str
    seal: Callable[[T], str]
    landed: bool = False

    def lua(self, result: T) -> dict[str, str]:
        """The argument of the Lua `commit` helper for a write with this result."""
        return {"key": self.key, "run": self.run, "record": self.seal(result)}

    async def hold(self, pipe: Pipeline) -> None:
        """In a pipeline before MULTI: watch the claim, and raise ClaimMoved if it is not ours."""
        await pipe.watch(self.key)
        held = lua.text("idempotency_held", HOLDS)
        if not await pipe.eval(held, 1, self.key, self.run):  # type: ignore[misc]
            raise ClaimMoved()

    def store(self, pipe: Pipeline, result: T) -> None:
        """Queue, inside MULTI after `hold`, the answer's record."""
        pipe.set(self.key, self.seal(result), keepttl=True)


@dataclass(frozen=True, slots=True)
class Held:
    """A run's claim on its key: what its write must find, and how its answer is sealed."""

    key: str
    run: str
    fingerprint: str
    keyring: Keyring

    def record(self, response: StoredResponse) -> str:
        """The `done` record for `response`, its body encrypted and bound to the key."""
        plain = codec.dumps(
            {"status": response.status, "headers": response.headers, "body": response.body.decode()}
        )
        sealed = self.keyring.encrypt(plain, self.key.encode())
        record = {"state": "done", "fingerprint": self.fingerprint, "response": sealed}
        return codec.dumps(record).decode()

    def commit(self, answer: Callable[[T], StoredResponse]) -> Commit[T]:
        """The commit that stores `answer(result)` with the write producing `result`."""
        return Commit(self.key, self.run, lambda result: self.record(answer(result)))

    @property
    def items(self) -> str:
        """The key of what the steps of a request written in several steps made."""
        return keys.idempotency_items(self.key, self.fingerprint)

    def item(self, index: int, made: str) -> dict[str, str]:
        """The argument of the Lua `commit` helper for step `index` of a request written in
        several steps, which makes `made` (an id): kept under the key, so that a retry of the
        request after a lost reply knows the step was done (`IdempotencyStore.made`)."""
        return {
            "key": self.key,
            "run": self.run,
            "items": self.items,
            "item": str(index),
            "made": made,
        }


class IdempotencyStore:
    """One record per (token, key), kept for 24 hours."""

    def __init__(self, redis: Redis, keyring: Keyring, replicas: Replicas | None = None) -> None:
        self._redis = redis
        self._keyring = keyring
        self._replicas = replicas or Replicas(redis, 0)
        self._claim = lua.register(redis, "idempotency_claim")
        # Every request with a key claims it first: claims made at once go in one call (see
        # Gathering), each decided as if alone.
        self._claiming: Gathering[None, tuple[str, list[str | int]], list[bytes]] = Gathering(
            self._claim_all
        )
        self._settle = lua.register(redis, "idempotency_settle", HOLDS)
        self._replace = lua.register(redis, "idempotency_replace")

    @staticmethod
    def _key(token_id: str, idempotency_key: str) -> str:
        # Hash the client's key so any printable string makes a well-formed Redis key.
        return keys.idempotency(token_id, _digest(idempotency_key))

    @staticmethod
    def audit_marker(token_id: str, idempotency_key: str) -> str:
        """The key that says the change made under this Idempotency-Key is audited."""
        return keys.audited_request(token_id, _digest(idempotency_key))

    async def claim(
        self,
        token_id: str,
        idempotency_key: str,
        fingerprint: str,
        lease_seconds: int,
        replicated: bool = False,
    ) -> Held | StoredResponse:
        """Claim the key for a new run of the request, or return the response to replay.

        Raises Conflict while another run holds the key, or when a run from before answers were
        committed with writes failed (it may have written), and Invalid when the key was used
        with a different request. With `replicated` (the request's write is answered only once
        replicas hold it), a response is replayed only once they do, else NotReplicated.
        """
        key = self._key(token_id, idempotency_key)
        run = secrets.token_hex(16)
        args: list[str | int] = [fingerprint, lease_seconds * 1000, run]
        if replicated and self._replicas.required:
            async with self._replicas.connection() as conn:
                [[verdict, *rest]] = await self._claim(
                    keys=[key], args=[KEEP_SECONDS, *args, 1], client=conn
                )
                if verdict == b"done":
                    await self._replicas.confirm(conn)
        else:
            verdict, *rest = await self._claiming(None, (key, [*args, 0]))
        match verdict.decode():
            case "mismatch":
                raise Invalid(
                    "This Idempotency-Key was already used with a different request.",
                    {"Idempotency-Key": ["reused with a different method, path or body"]},
                )
            case "running":
                raise Conflict("A request with this Idempotency-Key is still in progress.")
            case "done":
                return self._open(key, rest[0].decode())
            case "unknown":
                raise Conflict(
                    "An earlier request with this Idempotency-Key failed after it may have "
                    "taken effect; it is not run again. Check the resource it changes before "
                    "using a new key."
                )
        return Held(key, run, fingerprint, self._keyring)

    async def _claim_all(
        self, _: None, claims: list[tuple[str, list[str | int]]]
    ) -> AsyncIterator[list[bytes]]:
        args: list[str | int] = [KEEP_SECONDS]
        for _key, claim_args in claims:
            args += claim_args
        for verdict in await self._claim(keys=[key for key, _ in claims], args=args):
            yield verdict

    async def made(self, held: Held) -> dict[int, str]:
        """What earlier runs of a request written in several steps made, by step (`Held.item`)."""
        found = await self._redis.hgetall(held.items)  # type: ignore[misc]
        return {int(step): made.decode() for step, made in found.items()}

    async def complete(self, held: Held, response: StoredResponse) -> None:
        """Keep the response, encrypted, so repeats replay it (unless the run lost its claim,
        or its write stored it already: then this changes nothing)."""
        await self._settle(keys=[held.key], args=[held.run, held.record(response)])

    async def mark_unknown(self, held: Held) -> None:
        """The run failed: if its claim is still pending, no write of it committed or will
        (each checks the claim), so a retry may run again. A `done` record stays as it is."""
        record = {"state": "unknown", "fingerprint": held.fingerprint, "run": held.run}
        await self._settle(keys=[held.key], args=[held.run, codec.dumps(record)])

    async def release(self, held: Held) -> None:
        """Forget a claim whose request wrote nothing, so the client may try the key again."""
        await self._settle(keys=[held.key], args=[held.run, ""])

    async def reencrypt(self) -> tuple[int, int]:
        """Re-encrypt stored responses under the current master key; (changed, stored)."""
        changed = stored = 0
        async for key in self._redis.scan_iter(match=keys.idempotency("*", "*"), count=500):
            raw = await self._redis.get(key)
            if raw is None:
                continue
            record = codec.loads(raw)
            if record["state"] != "done":
                continue
            stored += 1
            if self._keyring.is_current(record["response"]):
                continue
            plain = self._keyring.decrypt(record["response"], key)
            record["response"] = self._keyring.encrypt(plain, key)
            changed += await self._replace(keys=[key], args=[raw, codec.dumps(record)])
        return changed, stored

    def _open(self, key: str, sealed: str) -> StoredResponse:
        try:
            plain = codec.loads(self._keyring.decrypt(sealed, key.encode()))
        except SecretDecryptionError:
            raise Conflict(
                "The response stored for this Idempotency-Key is under a master key that was "
                "removed; it cannot be replayed."
            ) from None
        return StoredResponse(plain["status"], plain["headers"], plain["body"].encode())
