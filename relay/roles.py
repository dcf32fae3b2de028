"""Roles: what an API token may do."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    """What a token may do: admin everything, ingest posts events, tenant sees its own objects."""

    ADMIN = "admin"
    INGEST = "ingest"
    TENANT = "tenant"
