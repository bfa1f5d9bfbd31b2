"""Virtual IPs in IKE_AUTH (RFC 7296 s2.19), as charon's ike_config task.

The initiator with ``vips`` adds a CFG_REQUEST (0.0.0.0/:: asks for any address, another one for
that address again) and takes the CFG_REPLY's addresses, DNS servers and subnets. The responder
with ``pools`` lends each requested address from the first pool of its family, keyed by the peer's
identity (``ike.pools``: the same address again on reauthentication or reconnect; an address
outside the pool, or taken, gets another one): no address at all is INTERNAL_ADDRESS_FAILURE,
no request while pools are configured is FAILED_CP_REQUIRED, both without a CHILD SA (the IKE SA
stays, as strongSwan). A CP payload with malformed attributes is INVALID_SYNTAX.

swanctl's ``dynamic`` traffic selectors are resolved here too: a side's virtual IPs once known,
the requested ones (any = the whole family) in the IKE_AUTH offer, else its outer address.
"""

from __future__ import annotations

import ipaddress

from ike.codec.config_payload import (MAX_ATTRIBUTES, ConfigAttributes, ConfigPayloadError, IPAddress,
                                      build_reply, build_request, cfg_type_name, parse_config)
from ike.codec.constants import CfgAttr, CfgType, NotifyType
from ike.codec.message import Message
from ike.codec.payloads import CpPayload, NotifyPayload, Payload
from ike.config import ChildConfig, TrafficSelector
from ike.events import LeaseAssigned, NegotiationFailed, VirtualIpsAssigned
from ike.tasks.base import IkeSaContext
from ike.tasks.child_sa import host_selector

MAX_VIPS = 2  # addresses one peer gets at most: one per family (what strongSwan clients ask for)
_FULL = {4: TrafficSelector.from_cidr("0.0.0.0/0"), 6: TrafficSelector.from_cidr("::/0")}


class ConfigFailure(Exception):
    """The responder's CP answer is a failure notify instead of a CHILD SA."""

    def __init__(self, notify: NotifyType, message: str):
        super().__init__(message)
        self.notify = notify


# --- traffic selectors ---------------------------------------------------------------------------

def _requested_vips(sa: IkeSaContext) -> list[IPAddress]:
    out = []
    for text in sa.config.vips:
        try:
            out.append(ipaddress.ip_address(text))
        except ValueError:
            continue  # the config layer checked them; a hand-built config is not trusted further
    return out


def local_selectors(sa: IkeSaContext, cfg: ChildConfig) -> list[TrafficSelector]:
    """Our selectors for ``cfg``: ``dynamic`` is our virtual IPs, before the reply the whole
    family of each requested one (the gateway narrows it to what it lends), else our outer address."""
    if not cfg.local_dynamic:
        return list(cfg.local_ts)
    if sa.config.vips and not sa.established:
        # the whole family, also for a specific wish or a reauthentication's address: the gateway
        # may lend another (as strongSwan)
        dynamic = list({v.version: _FULL[v.version] for v in _requested_vips(sa)}.values())
    elif sa.local_vips:
        dynamic = [host_selector(str(v)) for v in sa.local_vips]
    else:
        dynamic = [host_selector(sa.local[0])]
    return dynamic + list(cfg.local_ts)


def remote_selectors(sa: IkeSaContext, cfg: ChildConfig) -> list[TrafficSelector]:
    """The peer's selectors for ``cfg``: ``dynamic`` is the virtual IPs we lent it, else its outer
    address."""
    if not cfg.remote_dynamic:
        return list(cfg.remote_ts)
    if sa.remote_vips:
        dynamic = [host_selector(str(address)) for _, address in sa.remote_vips]
    else:
        dynamic = [host_selector(sa.remote[0])]
    return dynamic + list(cfg.remote_ts)


# --- initiator ---------------------------------------------------------------------------------

def request_payloads(sa: IkeSaContext) -> list[Payload]:
    """The CFG_REQUEST for IKE_AUTH: addresses we hold (reauthentication) or the configured vips."""
    vips = list(sa.local_vips) or _requested_vips(sa)
    return [build_request(vips[:MAX_VIPS])] if vips else []


def process_reply(sa: IkeSaContext, msg: Message) -> None:
    """The gateway's CFG_REPLY to our request: our virtual IPs (announced with VirtualIpsAssigned)."""
    if not sa.config.vips:
        return
    cp = next((p for p in msg.all(CpPayload) if p.cfg_type == CfgType.CFG_REPLY), None)
    if cp is None:
        failure = next((p.name for p in msg.all(NotifyPayload) if p.notify_type in (
            NotifyType.INTERNAL_ADDRESS_FAILURE, NotifyType.FAILED_CP_REQUIRED)), "no CFG_REPLY")
        sa.log("virtual_ip_failed", error=f"gateway assigned no virtual IP: {failure}")
        return
    try:
        got = parse_config(cp)
    except ConfigPayloadError as exc:
        sa.log("virtual_ip_failed", error=f"malformed CFG_REPLY: {exc}")
        return
    vips = tuple(a for a in got.addresses if int(a) != 0)[:MAX_VIPS]
    if not vips:
        sa.log("virtual_ip_failed", error="CFG_REPLY without an address")
        return
    sa.local_vips = vips
    sa.log("virtual_ip_assigned", vips=[str(v) for v in vips], dns=[str(d) for d in got.dns],
           nbns=[str(n) for n in got.nbns], netmask=str(got.netmask) if got.netmask else None)
    sa.emit(VirtualIpsAssigned(sa.name, sa.unique_id, tuple(str(v) for v in vips),
                               tuple(str(d) for d in got.dns), tuple(str(n) for n in got.subnets),
                               tuple(str(n) for n in got.nbns)))


# --- responder -----------------------------------------------------------------------------------

def _read_request(sa: IkeSaContext, msg: Message) -> ConfigAttributes | None:
    cps = msg.all(CpPayload)
    for other in cps:
        if other.cfg_type != CfgType.CFG_REQUEST:
            sa.log("cp_ignored", cfg_type=cfg_type_name(other.cfg_type))
    cp = next((p for p in cps if p.cfg_type == CfgType.CFG_REQUEST), None)
    if cp is None:
        return None
    try:
        request = parse_config(cp)
    except ConfigPayloadError as exc:
        raise ConfigFailure(NotifyType.INVALID_SYNTAX, f"malformed CFG_REQUEST: {exc}") from None
    if request.dropped:
        sa.count_drop("cp_attributes_capped")
        sa.log("cp_attributes_capped", read=MAX_ATTRIBUTES, dropped=request.dropped)
    return request


def respond_config(sa: IkeSaContext, msg: Message, now: float) -> list[Payload]:
    """The CFG_REPLY for an authenticated IKE_AUTH request (empty without request and pools);
    ConfigFailure when no CHILD SA may follow."""
    request = _read_request(sa, msg)
    pools = [p for p in (sa.pool(name) for name in sa.config.pools) if p is not None]
    wanted: list[IPAddress] = []  # the first request of each family: one address per family
    for address in request.addresses if request else ():
        if all(w.version != address.version for w in wanted):
            wanted.append(address)
    if not wanted:
        if pools:
            raise ConfigFailure(NotifyType.FAILED_CP_REQUIRED,
                                f"{sa.remote_id} asked for no virtual IP, but {sa.name} lends them")
        return []
    if not pools:
        sa.log("virtual_ip_not_assigned", why=f"{sa.name} has no pools", requested=[str(a) for a in wanted])
        return []
    sa.take_over_leases(now)  # a reconnect's old SAs go anyway: their addresses come back first
    identity = str(sa.remote_id)
    assigned: list[IPAddress] = []
    used = []
    for requested in wanted:
        for pool in pools:
            if pool.version != requested.version:
                continue
            lent = pool.acquire(identity, requested, now, sa.remote)
            if lent is not None:
                sa.remote_vips = (*sa.remote_vips, (pool.name, lent))
                assigned.append(lent)
                used.append(pool)
                sa.log("virtual_ip_leased", pool=pool.name, address=str(lent), peer_id=identity,
                       requested=str(requested))
                sa.emit(LeaseAssigned(sa.name, sa.unique_id, pool.name, str(lent), identity))
                break
        else:
            sa.log("virtual_ip_unavailable", requested=str(requested), peer_id=identity,
                   pools=[p.name for p in pools if p.version == requested.version])
    if not assigned:
        raise ConfigFailure(NotifyType.INTERNAL_ADDRESS_FAILURE,
                            f"no virtual IP for {identity} (pools {', '.join(p.name for p in pools)})")
    # as charon: the attributes of every pool that lent an address, whatever the client asked for;
    # an INTERNAL_IP4_NETMASK request is answered only when the pool sets ``netmask``
    lent_from = {pool.name: pool for pool in used}.values()
    dns = [d for pool in lent_from for d in pool.dns]
    subnets = [n for pool in lent_from for n in pool.subnets]
    nbns = [n for pool in lent_from for n in pool.nbns]
    netmask = next((pool.netmask for pool in lent_from if pool.netmask is not None and pool.version == 4), None)
    if netmask is None and request is not None and CfgAttr.INTERNAL_IP4_NETMASK in request.wants:
        sa.log("virtual_ip_netmask_not_configured", pools=[p.name for p in lent_from])
    return [build_reply(assigned, dns, subnets, nbns, netmask)]


def failure_payloads(sa: IkeSaContext, exc: ConfigFailure) -> list[Payload]:
    """The notify answering a failed CP request, with its event and log line."""
    sa.emit(NegotiationFailed(sa.name, "IKE_AUTH", exc.notify.name, str(exc)))
    sa.log("virtual_ip_failed", notify=exc.notify.name, error=str(exc))
    if exc.notify == NotifyType.INVALID_SYNTAX:  # as strongSwan, which rejects the whole message
        sa.delete_after_response = "invalid configuration payload"
    return [NotifyPayload(exc.notify)]
