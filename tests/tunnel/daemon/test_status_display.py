"""``espgw list-sas`` / ``status`` human output names every key exchange of a hybrid SA."""

from __future__ import annotations

from types import SimpleNamespace

from tunnel.daemon.status import describe_ike
from tunnel.ops.cli import render_sas


def test_hybrid_sa_shows_its_additional_key_exchanges():
    """The IKE SA's and a PFS-rekeyed CHILD SA's proposals keep their ``keN_`` methods from the IKE
    SA state to the rendered line, as the DH group is kept (``swanctl --list-sas`` shows both)."""
    state = {"name": "office", "unique_id": 1, "state": "established", "initiator": True,
             "spi_i": "11" * 8, "spi_r": "22" * 8, "local": ["192.0.2.1", 500], "remote": ["192.0.2.2", 500],
             "local_id": "gwa.lab", "remote_id": "gwb.lab",
             "proposal": "aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024",
             "children": [{"name": "net", "unique_id": 3, "state": "installed", "inbound_spi": None,
                           "proposal": "aes256gcm16-ecp384-ke1_mlkem768", "local_ts": ["10.0.0.0/24"],
                           "remote_ts": ["10.0.5.0/24"]}]}
    described = describe_ike(SimpleNamespace(children={}), state, now=0.0)  # type: ignore[arg-type]
    text = render_sas([described])
    assert "  aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024\n" in text
    assert "ESP:aes256gcm16-ecp384-ke1_mlkem768" in text
