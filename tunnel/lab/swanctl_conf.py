"""Render ``ike.config.ConnectionConfig`` objects as swanctl.conf text (swanctl.conf(5)).

One key per line (swanctl's parser wants that). The PSK goes into ``secrets.ike-NAME`` as hex,
so no quoting issue can arise; the file is written 0600 by the caller and never logged.
"""

from __future__ import annotations

import ipaddress

from ike.config import ChildConfig, ConnectionConfig, TrafficSelector


def _seconds(value: float) -> str:
    return f"{int(value)}s" if float(value).is_integer() else f"{value}s"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def format_ts(ts: TrafficSelector) -> str:
    """strongSwan's traffic selector syntax: CIDR or 'a-b' range, then [proto/port-port]."""
    nets = list(ipaddress.summarize_address_range(ts.start_addr, ts.end_addr))
    addr = str(nets[0]) if len(nets) == 1 else f"{ts.start_addr}-{ts.end_addr}"
    all_ports = (ts.start_port, ts.end_port) == (0, 65535)
    if ts.protocol == 0 and all_ports:
        return addr
    proto = "any" if ts.protocol == 0 else str(ts.protocol)
    if all_ports:
        return f"{addr}[{proto}]"
    if (ts.start_port, ts.end_port) == (65535, 0):
        return f"{addr}[{proto}/opaque]"
    port = str(ts.start_port) if ts.start_port == ts.end_port else f"{ts.start_port}-{ts.end_port}"
    return f"{addr}[{proto}/{port}]"


def ts_texts(selectors: list[TrafficSelector], dynamic: bool) -> list[str]:
    """A child's selectors as swanctl writes them, ``dynamic`` first when set."""
    return (["dynamic"] if dynamic else []) + [format_ts(ts) for ts in selectors]


def pools_toml(pools: list) -> list[str]:
    """``[pools.NAME]`` tables of espgw's configuration for ike.pools.AddressPool objects."""
    out: list[str] = []
    for pool in pools:
        out += [f"[pools.{pool.name}]", f'addrs = "{pool.addrs}"']
        if pool.dns:
            out.append("dns = [" + ", ".join(f'"{d}"' for d in pool.dns) + "]")
        if pool.subnets:
            out.append("subnet = [" + ", ".join(f'"{n}"' for n in pool.subnets) + "]")
        if getattr(pool, "nbns", ()):
            out.append("nbns = [" + ", ".join(f'"{n}"' for n in pool.nbns) + "]")
        if getattr(pool, "netmask", None) is not None:
            out.append(f'netmask = "{pool.netmask}"')
    return out


def _pool_lines(pools: list) -> list[str]:
    out = ["pools {"]
    for pool in pools:
        out += [f"    {pool.name} {{", f"        addrs = {pool.addrs}"]
        if pool.dns:
            out.append(f"        dns = {', '.join(map(str, pool.dns))}")
        if pool.subnets:
            out.append(f"        subnet = {', '.join(map(str, pool.subnets))}")
        out.append("    }")
    return out + ["}"]


def _child_lines(child: ChildConfig) -> list[str]:
    lines = [
        f"mode = {child.mode}",
        f"local_ts = {', '.join(ts_texts(child.local_ts, child.local_dynamic))}",
        f"remote_ts = {', '.join(ts_texts(child.remote_ts, child.remote_dynamic))}",
        f"esp_proposals = {', '.join(child.esp_proposals)}",
        f"start_action = {child.start_action}",
        f"dpd_action = {child.dpd_action}",
        f"close_action = {child.close_action}",
        f"rekey_time = {_seconds(child.rekey_time)}",
        f"rekey_packets = {child.rekey_packets}",
        f"rekey_bytes = {child.rekey_bytes}",
        f"replay_window = {child.replay_window}",
        f"tfc_padding = {child.tfc_padding}",
    ]
    if child.life_time is not None:
        lines.append(f"life_time = {_seconds(child.life_time)}")
    if child.rand_time is not None:
        lines.append(f"rand_time = {_seconds(child.rand_time)}")
    return lines


def _connection_lines(conn: ConnectionConfig) -> list[str]:
    lines = [
        f"version = {conn.version}",
        f"local_addrs = {', '.join(conn.local_addrs)}",
        f"remote_addrs = {', '.join(conn.remote_addrs)}",
        f"local_port = {conn.local_port}",
        f"remote_port = {conn.remote_port}",
        f"proposals = {', '.join(conn.proposals)}",
        f"encap = {_yes(conn.encap)}",
        f"mobike = {_yes(conn.mobike)}",
        f"fragmentation = {conn.fragmentation}",
        f"keyingtries = {conn.keyingtries}",
        f"unique = {conn.unique}",
        f"dpd_delay = {_seconds(conn.dpd_delay)}",
        f"rekey_time = {_seconds(conn.rekey_time)}",
        f"reauth_time = {_seconds(conn.reauth_time)}",
    ]
    if conn.vips:
        lines.append(f"vips = {', '.join(conn.vips)}")
    if conn.pools:
        lines.append(f"pools = {', '.join(conn.pools)}")
    if conn.dpd_timeout:
        lines.append(f"dpd_timeout = {_seconds(conn.dpd_timeout)}")
    if conn.over_time is not None:
        lines.append(f"over_time = {_seconds(conn.over_time)}")
    for side, auth in (("local", conn.local), ("remote", conn.remote)):
        lines.append(f"{side} {{")
        lines.append(f"    auth = {'rsa/pss' if auth.rsa_pss else auth.auth}")
        if auth.id:
            lines.append(f'    id = "{auth.id}"' if "," in auth.id or " " in auth.id else f"    id = {auth.id}")
        if auth.auth == "pubkey" and side == "local" and auth.credential is not None:
            lines.append(f"    certs = {conn.name}.pem")  # the files: tunnel.lab.lab_pki.write_swanctl_files
        if auth.auth == "pubkey" and side == "remote" and auth.trust is not None:
            lines.append(f"    cacerts = {', '.join(f'{conn.name}-ca{n}.pem' for n in range(len(auth.trust.cas)))}")
        lines.append("}")
    lines.append("children {")
    for child in conn.children:
        lines.append(f"    {child.name} {{")
        lines += [f"        {line}" for line in _child_lines(child)]
        lines.append("    }")
    lines.append("}")
    return lines


def render_swanctl_conf(connections: list[ConnectionConfig], pools: list | None = None) -> str:
    """The whole swanctl.conf: a connections section, a secrets section with the PSKs, and the
    address pools (ike.pools.AddressPool) if any."""
    out = ["# generated by tunnel.lab.swanctl_conf; contains PSKs", *(_pool_lines(pools) if pools else []),
           "connections {"]
    for conn in connections:
        out.append(f"    {conn.name} {{")
        out += [f"        {line}" for line in _connection_lines(conn)]
        out.append("    }")
    out.append("}")
    out.append("secrets {")
    for conn in connections:
        if not conn.psk or "psk" not in (conn.local.auth, conn.remote.auth):
            continue
        # ids select the secret; without explicit ids strongSwan uses the IP addresses
        ids = [conn.local.id or conn.local_addrs[0], conn.remote.id or conn.remote_addrs[0]]
        out.append(f"    ike-{conn.name} {{")
        out += [f"        id-{n} = {ident}" for n, ident in enumerate(ids, 1)]
        out.append(f"        secret = 0x{conn.psk.hex()}")
        out.append("    }")
    out.append("}")
    return "\n".join(out) + "\n"
