"""Who is calling: bearer token → Principal. Authorization itself lives on Principal."""

from __future__ import annotations

from starlette.requests import Request

from relay.errors import RateLimited, Unauthorized
from relay.roles import Role
from relay.services import Services, services
from relay.timefmt import now
from relay.tokens import BOOTSTRAP_ID, Principal, check_unexpired, same_token, token_hash


async def authenticate(request: Request) -> Principal:
    """Resolve `Authorization: Bearer <token>` or raise Unauthorized."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("Send an API token as 'Authorization: Bearer <token>'.")
    ctx = services(request)
    admin = ctx.settings.admin_token
    if admin is not None and same_token(presented, admin.get_secret_value()):
        return Principal(BOOTSTRAP_ID, Role.ADMIN)
    # Behind a proxy this is the proxy's address unless uvicorn trusts its forwarded headers
    # (FORWARDED_ALLOW_IPS).
    address = request.client.host if request.client else "unknown"
    if (wait := ctx.auth_failures.wait(address)) is not None:
        raise _too_many_failures(wait)
    try:
        return await _look_up(ctx, presented)
    except Unauthorized:
        if (wait := await ctx.auth_failures.failed(address)) is not None:
            raise _too_many_failures(wait) from None
        raise


async def _look_up(ctx: Services, presented: str) -> Principal:
    digest = token_hash(presented)
    moment = now()
    # Read from Redis on every request, never cached: a revoke holds on every replica at once.
    record = await ctx.tokens.by_hash(digest, int(moment.timestamp() * 1000))
    if record is None or not same_token(record.hash, digest):
        raise Unauthorized("This token is unknown or has been revoked.")
    check_unexpired(record.expires_at, moment)
    return record.principal()


def _too_many_failures(wait: int) -> RateLimited:
    return RateLimited(
        f"Too many failed authentications from this address; retry in {wait} s.", wait
    )
