"""Pure parts of the lab harness: swanctl.conf rendering and output parsers (no root needed)."""

from __future__ import annotations

from ike.config import AuthConfig, ChildConfig, ConnectionConfig, TrafficSelector
from tunnel.lab.netns import parse_ping
from tunnel.lab.sas import parse_list_sas
from tunnel.lab.strongswan import parse_logged_keys
from tunnel.lab.swanctl_conf import format_ts, render_swanctl_conf


PSK = b's3cret"{}'


def _conn() -> ConnectionConfig:
    return ConnectionConfig(
        name="lab", local_addrs=["192.0.2.1"], remote_addrs=["192.0.2.2"],
        local=AuthConfig(id="gwa.lab"), remote=AuthConfig(id="gwb.lab"), psk=PSK,
        children=[ChildConfig("net", [TrafficSelector.from_cidr("10.0.0.0/24")],
                              [TrafficSelector.from_cidr("10.0.5.0/24"),
                               TrafficSelector.from_cidr("fd00:b::/64", protocol=6, start_port=80, end_port=80)],
                              rekey_time=60, life_time=90)],
        dpd_delay=10, encap=True)


def test_swanctl_conf_one_key_per_line_and_psk_as_hex():
    text = render_swanctl_conf([_conn()])
    lines = [line.strip() for line in text.splitlines()]
    assert "proposals = aes256gcm16-prfsha256-ecp256, aes128-sha256-modp2048" in lines
    assert "remote_ts = 10.0.5.0/24, fd00:b::/64[6/80]" in lines
    assert "esp_proposals = aes256gcm16, aes128-sha256" in lines
    assert {"encap = yes", "mobike = yes", "dpd_delay = 10s", "rekey_time = 60s", "life_time = 90s",
            "id = gwa.lab", "id-1 = gwa.lab", "id-2 = gwb.lab", "start_action = none"} <= set(lines)
    assert "secret = 0x" + PSK.hex() in lines
    assert text.count("{") == text.count("}")
    assert all(line.count("=") <= 1 for line in lines)


def test_repr_of_connection_hides_psk():
    assert "s3cret" not in repr(_conn())


def test_format_ts_ranges_and_ports():
    import ipaddress
    rng = TrafficSelector(ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.5"))
    assert format_ts(rng) == "10.0.0.1-10.0.0.5"
    assert format_ts(TrafficSelector.from_cidr("10.0.0.0/8", protocol=17)) == "10.0.0.0/8[17]"
    assert format_ts(TrafficSelector.from_cidr("10.0.0.0/8", start_port=1, end_port=1024)) == "10.0.0.0/8[any/1-1024]"


LIST_SAS = """list-sa event {
  lab {
    uniqueid = 1
    state = ESTABLISHED
    local-id = C=CH, O=lab
    initiator-spi = 851df7e7ea799518
    child-sas {
      net-1 {
        name = net
        state = INSTALLED
        local-ts = [
          10.0.0.0/24
          fd00:a::/64
        ]
      }
    }
  }
}
list-sas reply {
}
"""


def test_parse_list_sas_pretty():
    (sa,) = parse_list_sas(LIST_SAS)
    assert sa["name"] == "lab" and sa["state"] == "ESTABLISHED" and sa["local-id"] == "C=CH, O=lab"
    child = sa["child-sas"]["net-1"]
    assert child["name"] == "net" and child["local-ts"] == ["10.0.0.0/24", "fd00:a::/64"]
    assert parse_list_sas("list-sas reply {\n}\n") == []


def test_parse_logged_keys_with_interleaved_threads():
    log = """02:01:41 11[IKE] Sk_d secret => 4 bytes @ 0x7f30c000cf30
02:01:41 11[IKE]    0: E1 71 0F A9                                      .q..
02:01:41 11[IKE] Sk_ei secret => 20 bytes @ 0x7f30c000cea0
02:01:41 11[IKE]    0: 7D 12 EF CD F5 4A 48 4E 8A 48 5B E3 56 86 EC 91  }....JHN.H[.V...
02:01:41 07[NET] received packet: from 192.0.2.2[500] to 192.0.2.1[500] (272 bytes)
02:01:41 11[IKE]   16: CC 13 C0 B0                                      ....
02:01:41 11[IKE] Sk_er secret => 2 bytes @ 0x7f30c000cec4
02:01:41 11[IKE]    0: AB CD                                            ..
02:01:50 12[IKE] Sk_d secret => 2 bytes @ 0x7f30c000cf30
02:01:50 12[IKE]    0: 01 02                                            ..
"""
    first, second = parse_logged_keys(log)
    assert first == {"Sk_d": "e1710fa9", "Sk_ei": "7d12efcdf54a484e8a485be35686ec91cc13c0b0", "Sk_er": "abcd"}
    assert second == {"Sk_d": "0102"}


def test_parse_ping():
    out = ("3 packets transmitted, 2 received, 33.3333% packet loss, time 401ms\n"
           "rtt min/avg/max/mdev = 0.070/0.120/0.170/0.050 ms\n")
    result = parse_ping(out)
    assert (result.transmitted, result.received, result.rtt_avg_ms) == (3, 2, 0.12)
    assert not result.ok and round(result.loss_percent) == 33
    assert parse_ping("").transmitted == 0
