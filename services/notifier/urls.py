"""Which webhook URLs the ledger calls: http(s) only; never a link-local or cloud metadata
address; a private or loopback address only when LEDGER_WEBHOOK_ALLOW_PRIVATE=1. Checked when an
endpoint is registered (the URL's host as written) and before every delivery (every address the
host resolves to)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Final
from urllib.parse import urlsplit

ALLOWED_SCHEMES: Final = ("http", "https")
METADATA_ADDRESSES: Final = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)
"""Link-local and cloud metadata addresses: refused always."""
METADATA_HOSTS: Final = ("metadata.google.internal", "metadata")
LOOPBACK_HOSTS: Final = ("localhost",)

SCHEME_RULE: Final = "a webhook URL is http:// or https://"
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
    """Refuse (`RefusedUrl`) a URL by its scheme and its host as written."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises on a port out of range)
    except ValueError:
        raise RefusedUrl(SCHEME_RULE) from None
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not host:
        raise RefusedUrl(SCHEME_RULE)
    host = host.lower().rstrip(".")
    if host in METADATA_HOSTS:
        raise RefusedUrl(METADATA_RULE)
    if host in LOOPBACK_HOSTS or host.endswith(".localhost"):
        if not allow_private:
            raise RefusedUrl(PRIVATE_RULE)
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: its addresses are checked before each delivery
    check_address(address, allow_private=allow_private)


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


RESOLVE_FAMILY: Final = socket.AF_UNSPEC
