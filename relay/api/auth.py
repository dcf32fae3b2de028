"""Who is calling: bearer token → Principal. Authorization itself lives on Principal."""

from __future__ import annotations

from starlette.requests import Request

from relay.errors import Unauthorized
from relay.roles import Role
from relay.services import services
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
    digest = token_hash(presented)
    moment = now()
    # Read from Redis on every request, never cached: a revoke holds on every replica at once.
    record = await ctx.tokens.by_hash(digest, int(moment.timestamp() * 1000))
    if record is None or not same_token(record.hash, digest):
        raise Unauthorized("This token is unknown or has been revoked.")
    check_unexpired(record.expires_at, moment)
    return record.principal()
