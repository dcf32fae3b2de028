"""relay's HTTP API as the operator CLI calls it, with RELAY_URL and RELAY_TOKEN."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from relay import __version__


class ApiRefused(Exception):
    """The API answered with a problem: its `detail`, and `errors` by field."""

    def __init__(self, status: int, detail: str, errors: Mapping[str, list[str]]) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = dict(errors)

    def __str__(self) -> str:
        fields = "; ".join(f"{name}: {', '.join(texts)}" for name, texts in self.errors.items())
        return f"{self.detail} ({fields})" if fields else self.detail


class Unreachable(Exception):
    """No answer from the API at all."""


class RelayClient:
    """A small synchronous client of relay's /v1 API."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"authorization": f"Bearer {token}", "user-agent": f"relay-cli/{__version__}"},
            timeout=timeout,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | None] | None = None,
        body: Mapping[str, object] | None = None,
    ) -> dict[str, Any]:
        """One API call: the decoded JSON body, or ApiRefused carrying the problem's detail."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, params=query, json=body)
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach relay at {self._http.base_url}: {exc}") from None
        try:
            answer: dict[str, Any] = response.json()
        except ValueError:
            answer = {}
        if response.is_error:
            detail = answer.get("detail") or f"HTTP {response.status_code}"
            raise ApiRefused(response.status_code, str(detail), answer.get("errors") or {})
        return answer

    def data(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The `data` object of a single-object answer."""
        found: dict[str, Any] = self.call(method, path, **kwargs)["data"]
        return found

    def delivery(self, delivery_id: str) -> dict[str, Any]:
        """A delivery with its attempts."""
        return self.data("GET", f"/v1/deliveries/{delivery_id}")

    def delivery_action(self, delivery_id: str, action: str) -> dict[str, Any]:
        """POST …/deliveries/{id}/retry or /cancel (the webhook is looked up first)."""
        webhook_id = self.delivery(delivery_id)["webhook_id"]
        return self.data("POST", f"/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/{action}")
