"""The SSRF guard: which addresses relay may deliver to, and which webhook URLs are refused."""

from __future__ import annotations

import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.ssrf import AddressPolicy, IPAddress, is_public, why_not_public

STRICT = AddressPolicy()
OPEN = AddressPolicy(allow_private=True)
TRUSTS_10_1 = AddressPolicy(allowed_cidrs=(IPv4Network("10.1.0.0/16"),))


def _mapped(v4: IPv4Address) -> IPv6Address:
    return IPv6Address(0xFFFF << 32 | int(v4))


def _compat(v4: IPv4Address) -> IPv6Address:
    return IPv6Address(int(v4))


def _nat64(v4: IPv4Address) -> IPv6Address:
    return IPv6Address(int(IPv6Address("64:ff9b::")) | int(v4))


def _local_nat64(v4: IPv4Address) -> IPv6Address:
    # RFC 6052 /48 layout: 16 bits of IPv4 before the u-octet, 16 after.
    octets = v4.packed
    return IPv6Address(bytes.fromhex("0064ff9b0001") + octets[:2] + b"\0" + octets[2:] + bytes(5))


def _6to4(v4: IPv4Address) -> IPv6Address:
    return IPv6Address(0x2002 << 112 | int(v4) << 80 | 1)


def _teredo_client(v4: IPv4Address) -> IPv6Address:
    server = IPv4Address("8.8.8.8")
    return IPv6Address(0x2001 << 112 | int(server) << 64 | int(v4) ^ 0xFFFF_FFFF)


def _teredo_server(v4: IPv4Address) -> IPv6Address:
    client = IPv4Address("8.8.4.4")
    return IPv6Address(0x2001 << 112 | int(v4) << 64 | int(client) ^ 0xFFFF_FFFF)


WRAPPERS = [_mapped, _compat, _nat64, _local_nat64, _6to4, _teredo_client, _teredo_server]
INNER = [IPv4Address(a) for a in ("127.0.0.1", "10.0.0.1", "169.254.169.254")]

# (address, words the reason must contain): one or more per range, with the edges just inside.
BLOCKED = [
    ("0.0.0.0", "unspecified"),
    ("0.255.255.255", "unspecified"),
    ("10.0.0.0", "RFC 1918"),
    ("10.255.255.255", "RFC 1918"),
    ("100.64.0.0", "carrier-grade NAT"),
    ("100.127.255.255", "carrier-grade NAT"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.0.0", "link-local"),
    ("169.254.169.254", "link-local"),
    ("169.254.255.255", "link-local"),
    ("172.16.0.0", "RFC 1918"),
    ("172.31.255.255", "RFC 1918"),
    ("192.0.0.0", "IETF protocol assignments"),
    ("192.0.0.255", "IETF protocol assignments"),
    ("192.0.2.1", "documentation (192.0.2.0/24)"),
    ("192.88.99.1", "6to4 relay anycast"),
    ("192.168.0.0", "RFC 1918"),
    ("192.168.255.255", "RFC 1918"),
    ("198.18.0.0", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("198.51.100.7", "documentation (198.51.100.0/24)"),
    ("203.0.113.9", "documentation (203.0.113.0/24)"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.255", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.254", "reserved"),
    ("255.255.255.255", "limited broadcast"),
    ("::", "unspecified"),
    ("::1", "loopback (::1/128)"),
    ("::2", "IPv4-compatible"),
    ("::7f00:1", "IPv4-compatible"),
    ("::808:808", "IPv4-compatible"),
    ("100::", "discard-only"),
    ("100::ffff:ffff:ffff:ffff", "discard-only"),
    ("64:ff9b:1::", "local-use NAT64"),
    ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", "local-use NAT64"),
    ("2001::1", "Teredo"),
    ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", "Teredo"),
    ("2001:2::1", "benchmarking"),
    ("2001:10::1", "ORCHID (2001:10::/28)"),
    ("2001:20::1", "ORCHIDv2"),
    ("2001:1::1", "IETF protocol assignments"),
    ("2001:1ff:ffff::1", "IETF protocol assignments"),
    ("2001:db8::1", "documentation (2001:db8::/32)"),
    ("2002::1", "6to4"),
    ("2002:808:808::1", "6to4"),
    ("3fff::1", "documentation (3fff::/20)"),
    ("3fff:fff:ffff::1", "documentation (3fff::/20)"),
    ("fc00::1", "unique local"),
    ("fd00:ec2::254", "unique local"),
    ("fdff:ffff::1", "unique local"),
    ("fe80::1", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("::ffff:0:7f00:1", "outside global unicast"),
    ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "outside global unicast"),
    ("4000::1", "outside global unicast"),
    ("5f00::1", "outside global unicast"),
]

# Just outside a blocked range, or plainly public.
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "1.0.0.0",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "192.0.1.255",
    "192.0.3.0",
    "192.88.98.255",
    "192.88.100.0",
    "192.167.255.255",
    "192.169.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "198.51.99.255",
    "203.0.114.0",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "2000::1",
    "2001:200::1",
    "2001:db9::1",
    "2003::1",
    "3ffe::1",
    "3fff:1000::1",
    "::ffff:8.8.8.8",
    "64:ff9b::8.8.8.8",
    "64:ff9b::1.1.1.1",
]


@pytest.mark.parametrize(("address", "words"), BLOCKED)
def test_special_purpose_ranges_are_not_public(address: str, words: str) -> None:
    ip = ip_address(address)

    assert not is_public(ip)
    assert not STRICT.allows(ip)
    reason = why_not_public(ip)
    assert reason is not None and words in reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_unicast_is_allowed(address: str) -> None:
    ip = ip_address(address)

    assert is_public(ip)
    assert why_not_public(ip) is None
    assert STRICT.allows(ip)


@pytest.mark.parametrize("inner", INNER, ids=str)
@pytest.mark.parametrize("wrap", WRAPPERS, ids=lambda f: f.__name__.strip("_"))
def test_private_ipv4_inside_every_ipv6_wrapper_is_refused(
    wrap: Callable[[IPv4Address], IPv6Address], inner: IPv4Address
) -> None:
    ip = wrap(inner)

    assert not is_public(ip)
    assert not STRICT.allows(ip)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1: loopback (127.0.0.0/8)"),
        (
            "64:ff9b::a9fe:a9fe",
            "NAT64 169.254.169.254: link-local (cloud metadata) (169.254.0.0/16)",
        ),
        ("64:ff9b::a00:1", "NAT64 10.0.0.1: private-use (RFC 1918) (10.0.0.0/8)"),
    ],
)
def test_a_wrapped_address_is_judged_and_named_by_the_ipv4_it_carries(
    address: str, reason: str
) -> None:
    assert why_not_public(ip_address(address)) == reason


def test_6to4_and_teredo_are_refused_even_around_a_public_ipv4() -> None:
    # Decision: both are deprecated tunnels refused whole rather than unwrapped (see relay.ssrf).
    public = IPv4Address("8.8.8.8")

    assert not STRICT.allows(_6to4(public))
    assert not STRICT.allows(_teredo_client(public))
    assert not STRICT.allows(_teredo_server(public))
    assert not STRICT.allows(_compat(public))


@pytest.mark.parametrize("address", [a for a, _ in BLOCKED] + PUBLIC)
def test_allow_private_allows_everything(address: str) -> None:
    assert OPEN.allows(ip_address(address))


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("10.1.0.0", True),
        ("10.1.255.255", True),
        ("::ffff:10.1.2.3", True),
        ("64:ff9b::10.1.2.3", True),
        ("10.0.255.255", False),
        ("10.2.0.0", False),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("::ffff:10.2.0.1", False),
        ("8.8.8.8", True),
    ],
)
def test_an_allowed_cidr_lets_exactly_that_range_through(address: str, allowed: bool) -> None:
    assert TRUSTS_10_1.allows(ip_address(address)) is allowed


def test_an_allowed_ipv6_cidr_lets_exactly_that_range_through() -> None:
    policy = AddressPolicy(allowed_cidrs=(IPv6Network("fd12:3456::/32"),))

    assert policy.allows(ip_address("fd12:3456::1"))
    assert policy.allows(ip_address("fd12:3456:ffff::1"))
    assert not policy.allows(ip_address("fd12:3457::1"))
    assert not policy.allows(ip_address("fd00:ec2::254"))


def test_an_allowed_wrapper_network_lets_its_wrapped_addresses_through() -> None:
    policy = AddressPolicy(allowed_cidrs=(IPv6Network("64:ff9b::/96"),))

    assert policy.allows(ip_address("64:ff9b::10.0.0.1"))
    assert not policy.allows(ip_address("10.0.0.1"))


LOOPBACK_SPELLINGS = [
    "http://127.0.0.1/",
    "http://127.1/",
    "http://127.0.1/",
    "http://0x7f000001/",
    "http://0X7F000001/",
    "http://0x7f.0.0.1/",
    "http://0177.0.0.1/",
    "http://0177.1/",
    "http://2130706433/",
    "http://017700000001/",
    "http://127.0.0.1./",
    "https://user:pw@127.0.0.1:8443/hook?x=1",
    "http://%31%32%37.0.0.1/",
    "http://１２７。０。０。１/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[0:0:0:0:0:ffff:7f00:1]/",
    "http://[64:ff9b::127.0.0.1]/",
]
OTHER_PRIVATE_SPELLINGS = [
    "http://0/",
    "http://0.0.0.0/",
    "http://10.1/",
    "http://0xa9fea9fe/",
    "http://169.254.169.254/latest/meta-data/",
    "http://0251.0376.0251.0376/",
    "http://192.168.1.1:8080/",
    "http://[fe80::1%25eth0]/",
    "http://[fe80::1%eth0]:8080/",
    "http://[fd00:ec2::254]/",
    "http://[::]/",
    "http://[::127.0.0.1]/",
]
LOCALHOST_NAMES = [
    "http://localhost/",
    "http://LOCALHOST/",
    "http://localhost./",
    "http://localhost:8000/hook",
    "http://api.localhost/",
    "http://a.b.LocalHost./",
    "http://ｌｏｃａｌｈｏｓｔ/",
    "http://%4C%4F%43%41%4C%48%4F%53%54/",
]


@pytest.mark.parametrize("url", LOOPBACK_SPELLINGS)
def test_every_spelling_of_loopback_is_refused(url: str) -> None:
    reason = STRICT.refuse_literal_host(url)

    assert reason is not None and "loopback" in reason


@pytest.mark.parametrize("url", OTHER_PRIVATE_SPELLINGS + LOCALHOST_NAMES)
def test_private_literals_and_localhost_names_are_refused(url: str) -> None:
    assert STRICT.refuse_literal_host(url) is not None


def test_the_reason_names_the_host_and_the_address_it_means() -> None:
    reason = STRICT.refuse_literal_host("http://0xa9fea9fe/")

    assert reason is not None
    assert "'0xa9fea9fe'" in reason and "169.254.169.254" in reason and "link-local" in reason


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/",
        "https://example.com./hook",
        "https://8.8.8.8/x",
        "https://134744072/x",
        "https://0x08080808/x",
        "https://[2606:4700:4700::1111]/",
        "https://localhost.example.com/",
        "https://mylocalhost/",
        "https://127.0.0.1.nip.io/",
        "https://1.2.3.4.5/",
        "https://08.0.0.1/",
        "https://0x/",
        "https://1.2.3.256.example/",
        "https://4294967296/",
        "https://127.0.0.1.0/",
        "https://126.256.0.1/",
        "http:///no-host",
    ],
)
def test_public_hosts_and_names_that_need_dns_are_accepted(url: str) -> None:
    assert STRICT.refuse_literal_host(url) is None


def test_an_unparseable_url_is_refused() -> None:
    assert STRICT.refuse_literal_host("http://[::1/") is not None


@pytest.mark.parametrize("url", LOOPBACK_SPELLINGS + OTHER_PRIVATE_SPELLINGS + LOCALHOST_NAMES)
def test_allow_private_lets_every_literal_and_localhost_through(url: str) -> None:
    assert OPEN.refuse_literal_host(url) is None


def test_an_allowed_cidr_lets_its_literals_through_but_never_localhost() -> None:
    policy = AddressPolicy(allowed_cidrs=(IPv4Network("127.0.0.0/8"),))

    assert policy.refuse_literal_host("http://127.0.0.1/") is None
    assert policy.refuse_literal_host("http://0x7f000001/") is None
    assert policy.refuse_literal_host("http://[::ffff:127.0.0.1]/") is None
    assert policy.refuse_literal_host("http://10.0.0.1/") is not None
    assert policy.refuse_literal_host("http://localhost/") is not None


v4_addresses = st.ip_addresses(v=4)


@given(v4_addresses)
@pytest.mark.parametrize("policy", [STRICT, TRUSTS_10_1], ids=["strict", "trusts-10.1"])
def test_mapped_and_nat64_forms_are_judged_like_the_ipv4(
    policy: AddressPolicy, a: IPv4Address
) -> None:
    assert policy.allows(_mapped(a)) == policy.allows(a)
    assert policy.allows(_nat64(a)) == policy.allows(a)


@given(
    st.one_of(
        st.ip_addresses(network="127.0.0.0/8"),
        st.ip_addresses(network="10.0.0.0/8"),
        st.ip_addresses(network="169.254.0.0/16"),
    )
)
def test_loopback_private_and_link_local_are_always_refused(a: IPAddress) -> None:
    assert not STRICT.allows(a)
    assert STRICT.refuse_literal_host(f"http://{a}/") is not None


@given(v4_addresses)
def test_we_are_at_least_as_strict_as_the_standard_library(a: IPv4Address) -> None:
    if is_public(a):
        assert a.is_global


def _spell(a: IPv4Address, draw: st.DrawFn) -> str:
    """Write `a` in one of the forms inet_aton reads: 1–4 parts, each decimal, hex or octal."""
    count = draw(st.integers(1, 4))
    head = list(a.packed[: count - 1])
    last = int.from_bytes(a.packed[count - 1 :])
    formats = st.sampled_from(["{:d}", "0x{:x}", "0X{:X}", "0{:o}"])
    return ".".join(draw(formats).format(n) for n in [*head, last])


@st.composite
def _blocked_spellings(draw: st.DrawFn) -> tuple[IPv4Address, str]:
    network = draw(st.sampled_from(["127.0.0.0/8", "10.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8"]))
    a = draw(st.ip_addresses(network=network))
    assert isinstance(a, IPv4Address)
    return a, _spell(a, draw)


@given(_blocked_spellings())
def test_any_inet_aton_spelling_of_a_private_address_is_refused(
    case: tuple[IPv4Address, str],
) -> None:
    a, spelling = case
    # The C library agrees that this spelling means `a`, so a resolver would connect to it.
    assert socket.inet_aton(spelling) == a.packed

    reason = STRICT.refuse_literal_host(f"http://{spelling}/")

    assert reason is not None and str(a) in reason


@given(st.text(alphabet="0123456789abcdefxX.", min_size=1, max_size=20))
def test_numeric_hosts_are_read_exactly_as_inet_aton_reads_them(host: str) -> None:
    try:
        meant: IPv4Address | None = IPv4Address(socket.inet_aton(host))
    except OSError:
        meant = None

    reason = STRICT.refuse_literal_host(f"http://{host}/")

    # Trailing dots are refused as the same host (resolvers ignore them); inet_aton is stricter.
    if meant is None and not host.endswith("."):
        assert reason is None
    elif meant is not None and not is_public(meant):
        assert reason is not None and f" is {meant}," in reason
