"""vici messages as charon spells them: list-sa, list-conn and log events from espgw's state.

swanctl prints these fields as they come (``swanctl --list-sas`` shows ``encr-alg``-``encr-keysize``
/ ``prf-alg`` / ``dh-group``), so the names follow strongSwan's, not espgw's.
"""

from __future__ import annotations


from ike.codec.ids import dn_to_text
from ike.config import AuthConfig, ConnectionConfig
from tunnel.ops.vici.algorithms import algorithms
from tunnel.ops.vici.codec import EncodableMessage


def log_message(name: str, text: str) -> EncodableMessage:
    return {"group": "IKE", "level": 1, "thread": 0, "ikesa-name": name, "msg": text}


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} day{'s' if days != 1 else ''}, {hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{minutes} minute{'s' if minutes != 1 else ''}" if minutes else f"{secs} second{'s' if secs != 1 else ''}"


def ike_sa(sa: dict) -> EncodableMessage:
    """One IKE SA as charon's list-sa event describes it, from ``status.describe_ike``."""
    out: EncodableMessage = {
        "uniqueid": sa["unique_id"], "version": 2, "state": sa["state"],
        "local-host": str(sa["local_addr"]), "local-port": sa["local_port"], "local-id": sa["local_id"] or "%any",
        "remote-host": str(sa["remote_addr"]), "remote-port": sa["remote_port"],
        "remote-id": sa["remote_id"] or "%any",
        "initiator-spi": sa["spi_i"] or "0", "responder-spi": sa["spi_r"] or "0",
    }
    if sa["initiator"]:
        out["initiator"] = True
    if sa["nat_local"]:
        out["nat-local"] = True
    if sa["nat_remote"]:
        out["nat-remote"] = True
    if sa["nat_local"] or sa["nat_remote"]:
        out["nat-any"] = True
    out.update(algorithms(sa.get("proposal"), ike=True))
    if sa["established"] is not None:
        out["established"] = int(sa["established"])
    if sa["rekey_in"] is not None:
        out["rekey-time"] = max(0, int(sa["rekey_in"]))
    for key in ("local_vips", "remote_vips"):  # virtual IPs, as charon lists them
        if sa.get(key):
            out[key.replace("_", "-")] = list(sa[key])
    children: EncodableMessage = {}
    for child in sa["children"]:
        entry: EncodableMessage = {
            "name": child["name"], "uniqueid": child["unique_id"], "reqid": child["unique_id"],
            "state": child["state"], "mode": str(child.get("mode", "tunnel")).upper(), "protocol": "ESP",
            "spi-in": child.get("spi_in") or "0", "spi-out": child.get("spi_out") or "0",
        }
        if child.get("encap"):
            entry["encap"] = True
        entry.update(algorithms(child.get("proposal"), ike=False))
        for key in ("bytes_in", "packets_in", "bytes_out", "packets_out"):
            entry[key.replace("_", "-")] = child.get(key, 0)
        if child.get("rekey_in") is not None:
            entry["rekey-time"] = max(0, int(child["rekey_in"]))
        if child.get("expires_in") is not None:
            entry["life-time"] = max(0, int(child["expires_in"]))
        if child.get("installed") is not None:
            entry["install-time"] = int(child["installed"])
        entry["local-ts"] = [str(ts) for ts in child.get("local_ts", [])]
        entry["remote-ts"] = [str(ts) for ts in child.get("remote_ts", [])]
        children[f"{child['name']}-{child['unique_id']}"] = entry
    out["child-sas"] = children
    return out


def connection(conn: ConnectionConfig) -> EncodableMessage:
    """One connection as charon's list-conn event describes it."""
    children: EncodableMessage = {}
    for child in conn.children:
        children[child.name] = {
            "mode": "TUNNEL", "rekey_time": int(child.rekey_time), "rekey_bytes": child.rekey_bytes,
            "rekey_packets": child.rekey_packets, "dpd_action": child.dpd_action, "close_action": child.close_action,
            "local-ts": [str(ts) for ts in child.local_ts], "remote-ts": [str(ts) for ts in child.remote_ts],
        }
    return {
        "local_addrs": list(conn.local_addrs), "remote_addrs": list(conn.remote_addrs), "version": "IKEv2",
        "reauth_time": int(conn.reauth_time), "rekey_time": int(conn.rekey_time), "unique": conn.unique.upper(),
        "local-1": _auth_round(conn.local), "remote-1": _auth_round(conn.remote),
        "children": children,
    }


def _auth_round(auth: AuthConfig) -> EncodableMessage:
    """One side's authentication as list-conn shows it (charon lists a certificate by its subject)."""
    if auth.auth != "pubkey":
        return {"class": "pre-shared key", "id": auth.id or "%any"}
    out: EncodableMessage = {"class": "public key"}
    if auth.credential is not None:
        subject = dn_to_text(auth.credential.certificate.subject)
        out["id"] = auth.id or subject  # charon's default id: the certificate's subject
        out["certs"] = [subject]
    else:
        out["id"] = auth.id or "%any"
    return out
