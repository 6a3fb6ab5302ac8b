"""Which webhook URLs the ledger calls: http(s) only; never a link-local or cloud metadata
address; a private or loopback address only when LEDGER_WEBHOOK_ALLOW_PRIVATE=1. Checked when an
endpoint is registered (the URL's host as written) and before every delivery (every address the
host resolves to)."""

from __future__ import annotations

import ipaddress
import re
from typing import Final
from urllib.parse import urlsplit

PORT_PATTERN: Final = (
    r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
)
URL_PATTERN: Final = (
    rf"^[hH][tT][tT][pP][sS]?://[A-Za-z0-9.-]{{1,253}}(:{PORT_PATTERN})?([/?][^\s#]*)?$"
)
"""An http(s) URL: a host name or IPv4 address, a port maybe, a path and query maybe; no
credentials, fragment or spaces. (Its host is then checked against the address rules.)"""
MAX_URL_CHARS: Final = 2_048
ALLOWED_SCHEMES: Final = ("http", "https")
METADATA_ADDRESSES: Final = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)
"""Link-local and cloud metadata addresses: refused always."""
METADATA_HOSTS: Final = ("metadata.google.internal", "metadata")
LOOPBACK_HOSTS: Final = ("localhost",)

SCHEME_RULE: Final = (
    "a webhook URL is http:// or https://, a host name or IPv4 address, a port maybe, a path"
    " maybe (no credentials, fragment or spaces)"
)
METADATA_RULE: Final = (
    "a webhook URL never names a link-local or cloud metadata address"
    " (169.254.0.0/16, fe80::/10, fd00:ec2::254)"
)
PRIVATE_RULE: Final = (
    "a webhook URL names no private or loopback address unless LEDGER_WEBHOOK_ALLOW_PRIVATE=1"
)


class RefusedUrl(ValueError):
    """A URL the ledger will not call; the message states the rule."""


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse (`RefusedUrl`) a URL by its form and its host as written (a link-local or
    metadata address is refused by that rule even where the form is wrong too)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
    except ValueError:
        raise RefusedUrl(SCHEME_RULE) from None
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not host:
        raise RefusedUrl(SCHEME_RULE)
    if host in METADATA_HOSTS:
        raise RefusedUrl(METADATA_RULE)
    if host in LOOPBACK_HOSTS or host.endswith(".localhost"):
        if not allow_private:
            raise RefusedUrl(PRIVATE_RULE)
    elif (address := _address(host)) is not None:  # a name's are checked on each delivery
        check_address(address, allow_private=allow_private)
    if len(url) > MAX_URL_CHARS or re.fullmatch(URL_PATTERN, url) is None:
        raise RefusedUrl(SCHEME_RULE)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_address(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool
) -> None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in METADATA_ADDRESSES) or address.is_link_local:
        raise RefusedUrl(METADATA_RULE)
    private = (
        address.is_private
        or address.is_loopback
        or address.is_unspecified
        or address.is_reserved
        or address.is_multicast
    )
    if private and not allow_private:
        raise RefusedUrl(PRIVATE_RULE)


def check_resolved(host: str, infos: list[tuple[object, ...]], *, allow_private: bool) -> None:
    """Refuse a host any of whose resolved addresses (`getaddrinfo`'s answer) is refused."""
    if host.lower().rstrip(".") in METADATA_HOSTS:
        raise RefusedUrl(METADATA_RULE)
    for info in infos:
        sockaddr = info[4]
        assert isinstance(sockaddr, tuple)
        check_address(
            ipaddress.ip_address(str(sockaddr[0]).split("%")[0]), allow_private=allow_private
        )
