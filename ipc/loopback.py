"""Which host names stay on this machine: the rule the HTTP listener's exposure check and its
``Host``/``Origin`` checks share (in ``ipc``: both processes may import it)."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = frozenset({"localhost"})
"""Names that are loopback without being addresses; addresses are judged by ``ipaddress``."""


def is_loopback(hostname: str) -> bool:
    """``localhost``, any ``127.0.0.0/8`` address or ``::1`` (IPv4-mapped forms included)."""
    name = hostname.lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
