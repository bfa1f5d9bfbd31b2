"""Virtual IP address pools for remote-access clients (swanctl.conf ``pools``), sans-I/O.

A pool hands each client identity one address, as strongSwan's in-memory pools do: leases are
keyed by the peer's identity, so a client that reauthenticates or reconnects gets the same
address again; several IKE SAs of one identity may share a lease. When the last SA using a
lease goes, the lease goes *offline*: it stays reserved for that identity for ``grace``
seconds, and after that it may go to another client, oldest first, but only once the pool has
no never-used address left (strongSwan reuses offline leases only when full, too).

Addresses are kept as integer offsets from the pool's first address, so a /8 costs nothing
until it is used. A subnet pool skips its network and broadcast addresses, a range
(``10.3.0.10-10.3.0.20``) is inclusive; a larger pool than 2**31 addresses (an IPv6 /64) is
cut to its first 2**31, as strongSwan does (``AddressPool.limited`` says so, for a warning).
Time comes in as ``now``; nothing here reads a clock.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_POOL_SIZE = 1 << 31
DEFAULT_GRACE = 300.0  # seconds an offline lease stays reserved for its identity


class PoolError(ValueError):
    """A pool definition that cannot be used (bad address or range, mixed families)."""


@dataclass
class _Lease:
    offset: int
    identity: Hashable
    peer: Hashable  # the client's outer (address, port) when it took the lease
    users: int = 1  # IKE SAs holding the lease; 0 = offline
    offline_since: float = 0.0


@dataclass
class AddressPool:
    """One named pool: ``addrs`` as swanctl writes it (``10.3.0.0/28`` or ``a-b``), and the DNS
    servers, subnets (INTERNAL_IP4/6_SUBNET: what the client may reach through the tunnel),
    NetBIOS name servers (INTERNAL_IP4_NBNS) and IPv4 netmask (INTERNAL_IP4_NETMASK) handed out
    with its addresses."""

    name: str
    addrs: str
    dns: tuple[IPAddress, ...] = ()
    subnets: tuple[IPNetwork, ...] = ()
    grace: float = DEFAULT_GRACE
    nbns: tuple[ipaddress.IPv4Address, ...] = ()
    netmask: ipaddress.IPv4Address | None = None
    first: IPAddress = field(init=False)
    size: int = field(init=False)
    _unused: int = field(init=False, default=0)  # offsets below this were handed out once
    _by_identity: dict[Hashable, list[_Lease]] = field(init=False, default_factory=dict)
    _by_offset: dict[int, _Lease] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.first, self.size = parse_pool_range(self.addrs)

    def attributes(self) -> tuple:
        """What a client is told besides its address (a reload compares it)."""
        return self.dns, self.subnets, self.nbns, self.netmask

    @property
    def limited(self) -> bool:
        """The range holds more addresses than a pool serves (cut to 2**31)."""
        return self.size == MAX_POOL_SIZE

    @property
    def version(self) -> int:
        return self.first.version

    @property
    def last(self) -> IPAddress:
        return self.first + (self.size - 1)

    def contains(self, address: IPAddress) -> bool:
        return address.version == self.version and 0 <= int(address) - int(self.first) < self.size

    def overlaps(self, other: AddressPool) -> bool:
        if self.version != other.version:
            return False
        return int(self.first) <= int(other.last) and int(other.first) <= int(self.last)

    # --- leases ---------------------------------------------------------------------------------
    def acquire(self, identity: Hashable, requested: IPAddress | None, now: float,
                peer: Hashable = None) -> IPAddress | None:
        """An address for ``identity`` connecting from ``peer`` (its outer address and port), or
        None when the pool is exhausted (INTERNAL_ADDRESS_FAILURE). ``requested`` is the client's
        hint: 0.0.0.0/:: or an address it had.

        As strongSwan: an offline lease of the identity comes back first; an online one is
        shared only with the same host asking for that address again (reauthentication keeps
        the old SA until the new one is up); otherwise a client gets an address of its own,
        also when another client uses the same identity."""
        leases = self._by_identity.get(identity, [])
        for lease in leases:
            if lease.users == 0:
                lease.users, lease.peer = 1, peer
                return self._address(lease.offset)
        for lease in leases:
            if lease.peer == peer and self._address(lease.offset) == requested:
                lease.users += 1
                return self._address(lease.offset)
        offset = self._free_offset(requested, now)
        if offset is None:
            return None
        stale = self._by_offset.get(offset)
        if stale is not None:  # an offline lease of another identity, past its grace time
            self._forget(stale)
        lease = _Lease(offset, identity, peer)
        self._by_identity.setdefault(identity, []).append(lease)
        self._by_offset[offset] = lease
        return self._address(offset)

    def release(self, identity: Hashable, address: IPAddress, now: float) -> bool:
        """One IKE SA of ``identity`` no longer uses ``address``; the lease goes offline when it
        was the last one. False if the identity held no such lease online."""
        for lease in self._by_identity.get(identity, ()):
            if lease.users and self._address(lease.offset) == address:
                lease.users -= 1
                if lease.users == 0:
                    lease.offline_since = now
                return True
        return False

    def _forget(self, lease: _Lease) -> None:
        leases = self._by_identity[lease.identity]
        leases.remove(lease)
        if not leases:
            del self._by_identity[lease.identity]

    def _free_offset(self, requested: IPAddress | None, now: float) -> int | None:
        if requested is not None and self.contains(requested):  # the client asks for one it knows
            offset = int(requested) - int(self.first)
            held = self._by_offset.get(offset)
            if offset >= self._unused and held is None:
                return self._take_unused(offset)
            if held is not None and self._expired(held, now):
                return offset
        if self._unused < self.size:
            return self._take_unused(self._unused)
        expired = [lease for lease in self._by_offset.values() if self._expired(lease, now)]
        if not expired:
            return None
        return min(expired, key=lambda lease: lease.offline_since).offset

    def _take_unused(self, offset: int) -> int:
        """Hand out ``offset`` >= the unused mark; a requested one further up leaves the ones
        below it unused (they are found again when the mark passes them)."""
        if offset == self._unused:
            self._unused += 1
            while self._unused in self._by_offset:
                self._unused += 1
        return offset

    def _expired(self, lease: _Lease, now: float) -> bool:
        return lease.users == 0 and now - lease.offline_since >= self.grace

    def _address(self, offset: int) -> IPAddress:
        return self.first + offset

    # --- status ----------------------------------------------------------------------------------
    def leases(self) -> list[dict]:
        """Every lease, online and offline (``swanctl --list-pools --leases``)."""
        return [{"address": str(self._address(lease.offset)), "identity": str(lease.identity),
                 "status": "online" if lease.users else "offline"}
                for lease in sorted(self._by_offset.values(), key=lambda lease: lease.offset)]

    def status(self) -> dict:
        online = sum(1 for lease in self._by_offset.values() if lease.users)
        return {"name": self.name, "base": str(self.first), "size": self.size, "online": online,
                "offline": len(self._by_offset) - online}


def parse_pool_range(text: str) -> tuple[IPAddress, int]:
    """(first address, number of addresses) of ``10.3.0.0/28`` (network and broadcast skipped,
    as strongSwan) or ``10.3.0.10-10.3.0.20`` (inclusive)."""
    text = text.strip()
    try:
        if "-" in text:
            start_text, end_text = (part.strip() for part in text.split("-", 1))
            start, end = ipaddress.ip_address(start_text), ipaddress.ip_address(end_text)
            if start.version != end.version:
                raise PoolError(f"pool range {text!r} mixes IPv4 and IPv6")
            if int(end) < int(start):
                raise PoolError(f"pool range {text!r} ends before it starts")
            size = int(end) - int(start) + 1
        else:
            net = ipaddress.ip_network(text, strict=False)
            start, size = net.network_address, net.num_addresses
            if size > 2:  # skip the network address, and the broadcast address (IPv4 and IPv6 alike)
                start, size = start + 1, size - 2
    except ValueError as exc:
        if isinstance(exc, PoolError):
            raise
        raise PoolError(f"pool addresses {text!r}: {exc}") from None
    return start, min(size, MAX_POOL_SIZE)
