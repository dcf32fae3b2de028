"""/metrics: open by default, behind RELAY_METRICS_TOKEN when it is set."""

from __future__ import annotations

from tests.fixtures import ClientFactory


async def test_metrics_are_open_without_a_metrics_token(make_client: ClientFactory) -> None:
    anonymous = await make_client(token=None)
    response = await anonymous.get("/metrics")
    assert response.status_code == 200
    assert "relay_events_accepted_total" in response.text


async def test_a_metrics_token_is_required_once_set(make_client: ClientFactory) -> None:
    anonymous = await make_client(token=None, metrics_token="scrape-me")
    refused = await anonymous.get("/metrics")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "unauthorized"
    wrong = await anonymous.get("/metrics", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    allowed = await anonymous.get("/metrics", headers={"authorization": "Bearer scrape-me"})
    assert allowed.status_code == 200
    assert "relay_events_accepted_total" in allowed.text
