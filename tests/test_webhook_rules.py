"""Webhook endpoint rules: what a customer may register (POST) and change (PATCH)."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.api.webhooks import WebhookCreate, WebhookUpdate
from relay.errors import Invalid
from relay.validation import parse

URL = "https://hooks.example.com/relay"
RESERVED = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "webhook-anything",
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "transfer-encoding",
    "connection",
    "accept-encoding",
    "traceparent",
    "tracestate",
    "baggage",
]


def create(**fields: object) -> WebhookCreate:
    return parse(WebhookCreate, {"url": URL, **fields})


def create_errors(**fields: object) -> dict[str, list[str]]:
    with pytest.raises(Invalid) as caught:
        create(**fields)
    return caught.value.errors


def update_errors(body: dict[str, object]) -> dict[str, list[str]]:
    with pytest.raises(Invalid) as caught:
        parse(WebhookUpdate, body)
    return caught.value.errors


def mixed_case(name: str) -> str:
    return "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(name))


def whsec(size: int) -> str:
    return "whsec_" + base64.b64encode(os.urandom(size)).decode()


def test_a_full_webhook_is_accepted_as_given() -> None:
    hook = create(
        tenant_id="space_42",
        events=["post.published", "media.uploaded"],
        description="Publishing dashboard",
        headers={"X-Custom": "v", "Authorization": "Bearer abc.def"},
        enabled=False,
        rate_limit_per_second=20,
    )
    assert hook.url == URL
    assert hook.tenant_id == "space_42"
    assert hook.events == ["post.published", "media.uploaded"]
    assert hook.description == "Publishing dashboard"
    assert hook.headers == {"X-Custom": "v", "Authorization": "Bearer abc.def"}
    assert hook.enabled is False
    assert hook.rate_limit_per_second == 20


def test_omitted_fields_take_the_contract_defaults() -> None:
    hook = create()
    assert hook.tenant_id is None
    assert hook.events == ["*"]
    assert hook.description == ""
    assert hook.headers == {}
    assert hook.enabled is True
    assert hook.rate_limit_per_second is None
    assert hook.secret is None


def test_unknown_fields_are_refused_by_name() -> None:
    assert set(create_errors(retries=3)) == {"retries"}


@pytest.mark.parametrize("tenant_id", ["", "a b", "space/42", "é", "x" * 129, 42])
def test_a_bad_tenant_id_is_refused(tenant_id: object) -> None:
    assert set(create_errors(tenant_id=tenant_id)) == {"tenant_id"}


@pytest.mark.parametrize("tenant_id", ["t", "space_42", "org:1.team-2", "x" * 128])
def test_a_good_tenant_id_is_accepted(tenant_id: str) -> None:
    assert create(tenant_id=tenant_id).tenant_id == tenant_id


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "/relative/hook",
        "example.com/hook",
        "https:///hook",
        "https://",
        "https://user@/hook",
        "javascript:alert(1)",
        "javascript://example.com/%0aalert(1)",
        "file:///etc/passwd",
        "https://exa mple.com/",
        "https://example.com/a\r\nX-Injected: 1",
        "https://example.com/\x00",
        "https://example.com\\@evil.test/",
        "https://exa<mple.com/",
        "https://a..b/",
        "http://[::1",
        "https://example.com:99999/",
        "https://example.com:0/",
        "https://example.com:http/",
        "",
    ],
)
def test_a_url_that_is_not_an_absolute_http_url_with_a_host_is_refused(url: str) -> None:
    assert set(create_errors(url=url)) == {"url"}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        # The client would send them as an Authorization header that clashes with any other.
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("https://user@hooks.example.com/x", "credentials"),
        ("https://:pw@hooks.example.com/x", "credentials"),
        # Valid IDNA 2003 but not IDNA 2008, which the sender's client reads hosts by.
        ("http://xn--ls8h.la/", "IDNA 2008"),
        ("http://\U0001f4a9.la/", "IDNA 2008"),
        ("http://\u2603.net/", "IDNA 2008"),
        ("http://xn--n3h.net/", "IDNA 2008"),
        ("http://xn--zz.example/", "IDNA 2008"),
    ],
)
def test_a_url_the_sender_could_never_deliver_to_is_refused_naming_why(
    url: str, problem: str
) -> None:
    [message] = create_errors(url=url)["url"]
    assert problem in message
    assert update_errors({"url": url}) == {"url": [message]}


@pytest.mark.parametrize(
    "url", ["https://bücher.example/x", "https://xn--bcher-kva.example/x", "https://faß.de/"]
)
def test_an_international_host_valid_under_idna_2008_is_accepted(url: str) -> None:
    assert create(url=url).url == url


def test_a_url_of_2048_characters_is_accepted_and_2049_refused() -> None:
    base = "https://example.com/"
    longest = base + "a" * (2048 - len(base))
    assert create(url=longest).url == longest
    assert set(create_errors(url=longest + "a")) == {"url"}


@pytest.mark.parametrize(
    ("given_url", "stored"),
    [
        ("https://example.com", "https://example.com"),
        (
            "HTTPS://Hooks.Example.COM/Path/A?Token=XyZ#Frag",
            "https://hooks.example.com/Path/A?Token=XyZ#Frag",
        ),
        ("http://Example.com:8080/x", "http://example.com:8080/x"),
        ("  https://example.com/hook  ", "https://example.com/hook"),
        ("http://[2001:DB8::1]:8443/x", "http://[2001:db8::1]:8443/x"),
        ("https://bücher.example/hook", "https://bücher.example/hook"),
        ("http://localhost:3000/hook", "http://localhost:3000/hook"),
    ],
)
def test_a_url_is_normalized_only_in_scheme_host_and_surrounding_space(
    given_url: str, stored: str
) -> None:
    assert create(url=given_url).url == stored


@pytest.mark.parametrize(
    "value", ["a\r\nb", "a\nb", "a\rb", "a\x00b", "a\x7fb", "café", " v", "v "]
)
def test_a_header_value_that_could_break_the_request_is_refused(value: str) -> None:
    assert set(create_errors(headers={"X-Bad": value})) == {"headers.X-Bad"}


@given(
    before=st.text(max_size=20),
    breaker=st.sampled_from(["\r", "\n", "\r\n", "\x00"]),
    after=st.text(max_size=20),
)
def test_any_header_value_with_cr_lf_or_nul_is_refused(
    before: str, breaker: str, after: str
) -> None:
    assert set(create_errors(headers={"X-Bad": before + breaker + after})) == {"headers.X-Bad"}


@given(
    value=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=100).map(
        str.strip
    )
)
def test_any_printable_ascii_header_value_is_accepted(value: str) -> None:
    assert create(headers={"X-Token": value}).headers == {"X-Token": value}


@pytest.mark.parametrize("name", ["X Bad", "X:Bad", "X-Bad:", "X(1)", "Ünïcode", "X\r\nY"])
def test_a_header_name_that_is_not_a_token_is_refused_at_its_own_path(name: str) -> None:
    assert set(create_errors(headers={name: "v"})) == {f"headers.{name}"}


@pytest.mark.parametrize("name", RESERVED)
@pytest.mark.parametrize("spell", [str.lower, str.upper, str.title, mixed_case])
def test_a_header_relay_sets_itself_is_refused_in_any_case(
    name: str, spell: Callable[[str], str]
) -> None:
    spelled = spell(name)
    errors = create_errors(headers={"X-Fine": "v", spelled: "v"})
    assert errors == {f"headers.{spelled}": ["Header is set by relay and cannot be overridden."]}


def test_the_same_header_in_two_cases_is_refused() -> None:
    errors = create_errors(headers={"X-Trace": "1", "x-trace": "2"})
    assert set(errors) == {"headers.X-Trace", "headers.x-trace"}


def test_headers_may_total_4_kib_of_names_and_values() -> None:
    name = "X-Big"
    exactly = {name: "v" * (4096 - len(name))}
    assert create(headers=exactly).headers == exactly
    assert set(create_errors(headers={name: "v" * (4097 - len(name))})) == {"headers"}


def test_many_small_headers_over_4_kib_are_refused() -> None:
    headers = {f"X-H{i:03}": "v" * 40 for i in range(100)}
    assert set(create_errors(headers=headers)) == {"headers"}


def test_a_header_value_that_is_not_a_string_is_refused() -> None:
    assert set(create_errors(headers={"X-Count": 3})) == {"headers.X-Count"}


def test_header_errors_never_quote_the_value() -> None:
    errors = create_errors(headers={"Authorization": "Bearer sk_live_abc\r\n"})
    assert "sk_live_abc" not in str(errors)


@pytest.mark.parametrize(
    ("events", "path"),
    [
        (["post.deleted"], "events.0"),
        (["*", "nope"], "events.1"),
        (["post.published", "Post.Failed"], "events.1"),
        (["post*"], "events.0"),
        (["*.published"], "events.0"),
        (["post.**"], "events.0"),
        ([], "events"),
        ("post.published", "events"),
        ([1], "events.0"),
    ],
)
def test_bad_event_filters_are_named(events: object, path: str) -> None:
    assert set(create_errors(events=events)) == {path}


def test_an_unknown_event_filter_lists_the_known_types() -> None:
    (message,) = create_errors(events=["post.deleted"])["events.0"]
    assert "'*'" in message
    assert "post.published" in message
    assert "media.uploaded" in message


@pytest.mark.parametrize(
    ("events", "stored"),
    [
        (["*"], ["*"]),
        (["post.failed"], ["post.failed"]),
        (["media.uploaded", "post.failed", "media.uploaded"], ["media.uploaded", "post.failed"]),
        (["*", "*"], ["*"]),
        (["post.*", "media.uploaded"], ["post.*", "media.uploaded"]),
    ],
)
def test_event_filters_are_kept_in_order_without_duplicates(
    events: list[str], stored: list[str]
) -> None:
    assert create(events=events).events == stored


@pytest.mark.parametrize("rate", [0, -1, 10_001, 1.5, "5", True])
def test_a_bad_rate_limit_is_refused(rate: object) -> None:
    assert set(create_errors(rate_limit_per_second=rate)) == {"rate_limit_per_second"}


@pytest.mark.parametrize("rate", [1, 50, 10_000, None])
def test_a_positive_rate_limit_or_none_is_accepted(rate: int | None) -> None:
    assert create(rate_limit_per_second=rate).rate_limit_per_second == rate


@pytest.mark.parametrize("enabled", ["false", 0, None])
def test_enabled_must_be_a_real_boolean(enabled: object) -> None:
    assert set(create_errors(enabled=enabled)) == {"enabled"}


def test_a_description_may_have_1024_characters_but_not_more() -> None:
    assert create(description="d" * 1024).description == "d" * 1024
    assert set(create_errors(description="d" * 1025)) == {"description"}


@pytest.mark.parametrize("size", [24, 32, 64])
def test_an_imported_secret_of_24_to_64_bytes_is_accepted(size: int) -> None:
    secret = whsec(size)
    hook = create(secret=secret)
    assert hook.secret == secret
    assert secret not in repr(hook)


@pytest.mark.parametrize(
    "secret",
    [
        whsec(23),
        whsec(65),
        base64.b64encode(os.urandom(32)).decode(),
        "whsec-" + base64.b64encode(os.urandom(32)).decode(),
        "WHSEC_" + base64.b64encode(os.urandom(32)).decode(),
        "whsec_" + "!" * 44,
        "whsec_" + base64.b64encode(os.urandom(32)).decode().rstrip("="),
        "whsec_" + base64.urlsafe_b64encode(b"\xff" * 33).decode(),
        whsec(32) + "\n",
        "whsec_" + "é" * 44,
    ],
    # Named, not shown: random secrets would give each test process other test ids.
    ids=[
        "23-bytes",
        "65-bytes",
        "no-prefix",
        "dash-prefix",
        "upper-case-prefix",
        "not-base64",
        "unpadded",
        "url-safe-alphabet",
        "trailing-newline",
        "not-ascii",
    ],
)
def test_a_bad_imported_secret_is_refused_without_echoing_it(secret: str) -> None:
    with pytest.raises(Invalid) as caught:
        create(secret=secret)
    assert set(caught.value.errors) == {"secret"}
    exposed = [str(caught.value), str(caught.value.errors), str(caught.value.__cause__)]
    for text in exposed:
        assert secret.removeprefix("whsec_").strip() not in text


def test_update_with_nothing_changes_nothing() -> None:
    update = parse(WebhookUpdate, {})
    assert update.changes() == {}


def test_update_changes_only_the_fields_present() -> None:
    update = parse(WebhookUpdate, {"enabled": False, "description": "paused"})
    assert update.changes() == {"enabled": False, "description": "paused"}
    assert update.model_fields_set == {"enabled", "description"}


def test_update_may_clear_the_rate_limit_with_null() -> None:
    update = parse(WebhookUpdate, {"rate_limit_per_second": None})
    assert update.changes() == {"rate_limit_per_second": None}


@pytest.mark.parametrize("field", ["url", "events", "description", "headers", "enabled"])
def test_update_refuses_null_for_a_setting_that_cannot_be_empty(field: str) -> None:
    assert set(update_errors({field: None})) == {field}


@pytest.mark.parametrize("field", ["tenant_id", "secret"])
def test_update_cannot_move_a_webhook_or_set_its_secret(field: str) -> None:
    assert set(update_errors({field: "space_43"})) == {field}


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"url": "ftp://example.com/"}, "url"),
        ({"events": []}, "events"),
        ({"events": ["*", "post.deleted"]}, "events.1"),
        ({"headers": {"Content-Type": "text/plain"}}, "headers.Content-Type"),
        ({"headers": {"X-Bad": "a\r\nb"}}, "headers.X-Bad"),
        ({"rate_limit_per_second": 0}, "rate_limit_per_second"),
        ({"description": "d" * 1025}, "description"),
    ],
)
def test_update_applies_the_same_rules_as_create(body: dict[str, object], path: str) -> None:
    assert set(update_errors(body)) == {path}


def test_update_normalizes_like_create() -> None:
    update = parse(
        WebhookUpdate,
        {"url": "HTTPS://Example.com/New", "events": ["post.failed", "post.failed"]},
    )
    assert update.changes() == {"url": "https://example.com/New", "events": ["post.failed"]}
