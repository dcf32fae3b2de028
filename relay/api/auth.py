"""Who is calling: bearer token → Principal. Authorization itself lives on Principal."""

from __future__ import annotations

from starlette.requests import Request

from relay.errors import RateLimited, Unauthorized
from relay.resources import Resources, resources
from relay.roles import Role
from relay.timefmt import now
from relay.tokens import (
    BOOTSTRAP_ID,
    Principal,
    TokenChanged,
    TokenCheck,
    check_unexpired,
    same_token,
    token_hash,
)


async def authenticate(request: Request, remembered_will_do: bool = False) -> Principal:
    """Resolve `Authorization: Bearer <token>` or raise Unauthorized.

    `remembered_will_do`: a record this process read lately will do (see `TokenCheck`); the
    principal's check is then to be confirmed, by a write or by `confirm`, before any answer.
    """
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("Send an API token as 'Authorization: Bearer <token>'.")
    ctx = resources(request)
    admin = ctx.settings.admin_token
    if admin is not None and same_token(presented, admin.get_secret_value()):
        return Principal(BOOTSTRAP_ID, Role.ADMIN)
    # Behind a proxy this is the proxy's address unless uvicorn trusts its forwarded headers
    # (FORWARDED_ALLOW_IPS).
    address = request.client.host if request.client else "unknown"
    if (wait := ctx.auth_failures.wait(address)) is not None:
        raise _too_many_failures(wait)
    try:
        return await _look_up(ctx, presented, remembered_will_do)
    except Unauthorized:
        if (wait := await ctx.auth_failures.failed(address)) is not None:
            raise _too_many_failures(wait) from None
        raise


async def _look_up(ctx: Resources, presented: str, remembered_will_do: bool) -> Principal:
    digest = token_hash(presented)
    moment = now()
    # Read from Redis unless a remembered record will do: a revoke holds on every replica at
    # once, since whatever goes by a remembered record is checked against Redis's.
    now_ms = int(moment.timestamp() * 1000)
    found = ctx.tokens.remembered(digest, now_ms) if remembered_will_do else None
    remembered = found is not None
    if found is None:
        found = await ctx.tokens.by_hash(digest, now_ms)
    if found is None or not same_token(found.record.hash, digest):
        raise Unauthorized("This token is unknown or has been revoked.")
    check_unexpired(found.record.expires_at, moment)
    check = TokenCheck(digest, found.fingerprint, remembered)
    return found.record.principal(check)


async def confirm(request: Request, principal: Principal) -> None:
    """Raise TokenChanged unless the record `principal` authenticated by is still as it was.

    For a request that went by a remembered record and wrote nothing that checked it: a read
    confirms it before anything is answered (a revoked token never reads anything either).
    """
    check = principal.check
    if check is None or check.confirmed or not check.remembered:
        return
    found = await resources(request).tokens.by_hash(check.token_hash, int(now().timestamp() * 1000))
    if found is None or found.fingerprint != check.fingerprint:
        raise TokenChanged
    check.confirmed = True


def _too_many_failures(wait: int) -> RateLimited:
    return RateLimited(
        f"Too many failed authentications from this address; retry in {wait} s.", wait
    )
