"""The SSRF guard: which IP addresses relay may deliver to, decided without any I/O.

Webhook URLs are typed by strangers, so every address the sender is about to connect to is judged
here (`AddressPolicy.allows`), and plainly private hosts are refused when a webhook is saved
(`AddressPolicy.refuse_literal_host`). Only public unicast passes unless the operator opts in.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from urllib.parse import unquote, urlsplit

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# First match wins, so a narrow range sits before the wider one it names more precisely.
_BLOCKED_V4: tuple[tuple[IPv4Network, str], ...] = tuple(
    (IPv4Network(cidr), name)
    for cidr, name in (
        ("0.0.0.0/8", "unspecified ('this network')"),
        ("10.0.0.0/8", "private-use (RFC 1918)"),
        ("100.64.0.0/10", "carrier-grade NAT shared space"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("172.16.0.0/12", "private-use (RFC 1918)"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private-use (RFC 1918)"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "limited broadcast"),
        ("240.0.0.0/4", "reserved"),
    )
)

# IPv6 is judged the other way round: only 2000::/3 is global unicast at all (_GLOBAL_V6), and
# these are the special ranges inside it, plus well-known ones outside it for a precise message.
_BLOCKED_V6: tuple[tuple[IPv6Network, str], ...] = tuple(
    (IPv6Network(cidr), name)
    for cidr, name in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        # Deprecated (RFC 4291); refused whole rather than unwrapped, nothing public uses it.
        ("::/96", "IPv4-compatible (deprecated)"),
        ("100::/64", "discard-only"),
        # Where the IPv4 sits depends on the operator's prefix length, so it cannot be unwrapped.
        ("64:ff9b:1::/48", "local-use NAT64"),
        # Teredo is refused whole rather than unwrapped: the client IPv4 is obfuscated, the
        # server IPv4 is a second address to judge, and no webhook receiver lives behind it.
        ("2001::/32", "Teredo"),
        ("2001:2::/48", "benchmarking"),
        ("2001:10::/28", "ORCHID"),
        ("2001:20::/28", "ORCHIDv2"),
        ("2001::/23", "IETF protocol assignments"),
        ("2001:db8::/32", "documentation"),
        # 6to4 is refused whole rather than unwrapped: it is deprecated (RFC 7526), and a host
        # with a 6to4 tunnel would hand 2002:7f00:1:: to its own loopback.
        ("2002::/16", "6to4"),
        ("3fff::/20", "documentation"),
        ("fc00::/7", "unique local (incl. AWS metadata fd00:ec2::254)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
    )
)
_GLOBAL_V6 = IPv6Network("2000::/3")

# Connecting to these reaches the embedded IPv4 (a dual-stack socket, or DNS64/NAT64 on an
# IPv6-only host, where public targets legitimately arrive in this form), so the IPv4 is judged.
_IPV4_WRAPPERS: tuple[tuple[IPv6Network, str], ...] = (
    (IPv6Network("::ffff:0:0/96"), "IPv4-mapped"),
    (IPv6Network("64:ff9b::/96"), "NAT64"),
)

_IPV4_PARTS = 4
# Said with every refusal, so whoever tries relay on one machine learns how to allow it.
_PUBLIC_ONLY = (
    "webhooks must reach a public address (RELAY_ALLOW_PRIVATE_TARGETS=true allows private and "
    "loopback targets, for development; RELAY_ALLOWED_CIDRS trusts chosen networks)"
)
_RADIX_DIGITS = {
    8: frozenset("01234567"),
    10: frozenset("0123456789"),
    16: frozenset("0123456789abcdef"),
}


def _unwrap(ip: IPAddress) -> tuple[IPAddress, str | None]:
    """Return the IPv4 an IPv6 wrapper carries and the wrapper's name, else `ip` itself."""
    if isinstance(ip, IPv6Address):
        for network, name in _IPV4_WRAPPERS:
            if ip in network:
                return IPv4Address(int(ip) & 0xFFFF_FFFF), name
    return ip, None


def why_not_public(ip: IPAddress) -> str | None:
    """Name the special-purpose range that keeps `ip` from being public; None if it is public."""
    inner, wrapper = _unwrap(ip)
    table: tuple[tuple[IPNetwork, str], ...] = (
        _BLOCKED_V4 if isinstance(inner, IPv4Address) else _BLOCKED_V6
    )
    for network, name in table:
        if inner in network:
            reason = f"{name} ({network})"
            return reason if wrapper is None else f"{wrapper} {inner}: {reason}"
    if isinstance(inner, IPv6Address) and inner not in _GLOBAL_V6:
        return f"outside global unicast ({_GLOBAL_V6})"
    return None


def is_public(ip: IPAddress) -> bool:
    """Tell whether `ip` is public unicast, judging any IPv4 an IPv6 wrapper carries."""
    return why_not_public(ip) is None


def _aton_part(part: str) -> int | None:
    # C's strtoul with base 0, as inet_aton(3) reads each part: 0x… hex, 0… octal, else decimal.
    if part.startswith("0x"):
        digits, radix = part[2:], 16
    elif part.startswith("0"):
        digits, radix = part, 8
    else:
        digits, radix = part, 10
    # int() alone would also take "+", "_", spaces and non-ASCII digits, which inet_aton does not.
    if not digits or not set(digits) <= _RADIX_DIGITS[radix]:
        return None
    return int(digits, radix)


def _inet_aton(host: str) -> IPv4Address | None:
    """Read `host` as inet_aton(3) does: 1–4 parts, the last filling all the remaining bytes."""
    parts = host.split(".")
    numbers = [n for n in map(_aton_part, parts) if n is not None]
    if len(numbers) != len(parts) or len(parts) > _IPV4_PARTS:
        return None
    *head, last = numbers
    if any(n > 0xFF for n in head) or last >= 1 << (8 * (_IPV4_PARTS + 1 - len(parts))):
        return None
    for index, n in enumerate(head):
        last |= n << (24 - 8 * index)
    return IPv4Address(last)


def _ip_literal(host: str) -> IPAddress | None:
    if ":" in host:
        try:
            return IPv6Address(host)
        except ValueError:
            return None
    return _inet_aton(host)


def _normalise_host(hostname: str) -> str:
    # Clients percent-decode and IDNA-map hosts before resolving, so "%31%32%37.0.0.1", fullwidth
    # "ｌｏｃａｌｈｏｓｔ" and "127。0。0。1" must be judged as what they become; trailing dots
    # name the same host.
    host = unicodedata.normalize("NFKC", unquote(hostname)).replace("\u3002", ".")
    return host.lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses relay may connect to: public unicast, plus what the operator trusts."""

    allow_private: bool = False
    allowed_cidrs: tuple[IPNetwork, ...] = ()

    def allows(self, ip: IPAddress) -> bool:
        """Tell whether relay may connect to `ip`; the sender asks this for every address."""
        if self.allow_private or is_public(ip):
            return True
        inner, _ = _unwrap(ip)
        return any(ip in network or inner in network for network in self.allowed_cidrs)

    def refuse_literal_host(self, url: str) -> str | None:
        """Say why `url`'s host is a localhost name or a disallowed IP literal, else None."""
        try:
            hostname = urlsplit(url).hostname
        except ValueError:
            return "the URL cannot be parsed"
        if hostname is None:
            return None
        host = _normalise_host(hostname)
        if host == "localhost" or host.endswith(".localhost"):
            # No CIDR can vouch for a name that every resolver maps to loopback.
            if self.allow_private:
                return None
            return f"host {hostname!r} is a localhost name; {_PUBLIC_ONLY}"
        ip = _ip_literal(host)
        if ip is None or self.allows(ip):
            return None
        return f"host {hostname!r} is {ip}, {why_not_public(ip)}; {_PUBLIC_ONLY}"
