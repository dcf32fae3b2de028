"""The PostgreSQL `relay dev` embeds: made once, the same data on every start, and only reachable
with its password."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

import relay.embedded
from relay.embedded import PG_MISSING, EmbeddedPostgres, EmbeddedPostgresError
from relay.history import migrations
from tests.support import FAST_POSTGRES, empty_history, free_port, postgres_dir


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with postgres_dir() as path:
        yield path


def _with_netloc(url: str, netloc: str) -> str:
    return urlsplit(url)._replace(netloc=netloc).geturl()


async def test_a_restart_serves_the_same_cluster_and_only_with_the_password(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)  # so a URL without one sends none
    first = EmbeddedPostgres(data_dir, FAST_POSTGRES)
    url = first.start()
    try:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("CREATE TABLE kept (note text)")
            await conn.execute("INSERT INTO kept VALUES ('still here')")
            # relay's role owns its database and nothing more.
            assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = 'relay'")
        finally:
            await conn.close()
    finally:
        first.stop()
    assert first.process is not None and first.process.returncode is not None

    password_file = data_dir / "postgres.password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600

    port = free_port()
    again = EmbeddedPostgres(data_dir, FAST_POSTGRES, port=port)
    url = again.start()
    try:
        assert urlsplit(url).port == port
        assert urlsplit(url).password == password_file.read_text().strip()
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT note FROM kept") == "still here"
        finally:
            await conn.close()

        host = f"127.0.0.1:{urlsplit(url).port}"
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(_with_netloc(url, f"relay@{host}"), passfile=str(data_dir / "-"))
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(_with_netloc(url, f"relay:wrong@{host}"))
        # Not even with relay's password: the superuser has no way in over the network.
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await asyncpg.connect(
                _with_netloc(url, f"postgres:{urlsplit(url).password}@{host}"), database="postgres"
            )
    finally:
        again.stop()


def test_without_postgresql_it_says_how_to_get_it(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay.embedded, "_DEBIAN_ROOT", tmp_path / "none")
    monkeypatch.setenv("PATH", str(tmp_path))  # neither postgres nor pg_config on it
    with pytest.raises(EmbeddedPostgresError) as raised:
        EmbeddedPostgres(data_dir).start()
    assert str(raised.value) == PG_MISSING
    assert "apt-get install postgresql" in PG_MISSING and "RELAY_DATABASE_URL" in PG_MISSING


async def test_history_db_empties_every_history_table_but_keeps_the_schema(
    history_db: asyncpg.Connection,
) -> None:
    await history_db.execute(
        "CREATE TABLE events_test PARTITION OF events "
        "FOR VALUES FROM ('2020-01-01') TO ('2020-01-02')"
    )
    try:
        await history_db.execute(
            "INSERT INTO events (tenant_id, id, created_at, type, payload, delivery_ids) "
            "VALUES ('t', 'evt_1', '2020-01-01T12:00:00Z', 'post.published', '', '{}')"
        )
        await empty_history(history_db)
        assert await history_db.fetchval("SELECT count(*) FROM events") == 0
        version = await history_db.fetchval("SELECT max(version) FROM relay_schema")
        assert version == migrations.latest()
    finally:
        await history_db.execute("DROP TABLE events_test")
