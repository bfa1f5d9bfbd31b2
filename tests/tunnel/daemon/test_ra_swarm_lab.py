"""A gateway serving many clients (issue #15), in the namespace lab against the real daemon.

100 road warriors: 99 swarm clients (``tunnel.lab.swarm``: real IKE initiators in one process,
each with its own socket, identity and SAs) and one real espgw client daemon, behind two cafe
NATs (several clients per public address, told apart by port), all leasing virtual IPs from the
espgw office gateway's pool. One set-up serves the module.
"""

from __future__ import annotations

import collections
import re
import subprocess
from typing import cast

import pytest

from tunnel.lab.espgw import EspgwGateway, GatewaySettings, wait_until
from tunnel.lab.netns import Gateway
from tunnel.lab.swarm import (CAFE1_CLIENTS, CAFE2_CLIENTS, DASHBOARD, OFFICE_LAN, Swarm, SwarmLab, laptop_connection,
                              office_connection, office_pool)

pytestmark = [pytest.mark.lab]

SWARM_PER_CAFE = (49, 50)  # cafe 1 also has the real client: 100 clients in all
CLIENTS = sum(SWARM_PER_CAFE) + 1
LEASE = re.compile(r"^\s*(\d+\.\d+\.\d+\.\d+)\s+(online|offline)\s+'([^']*)'", re.M)


@pytest.fixture(scope="module")
def lab():
    with SwarmLab() as lab:
        yield lab


@pytest.fixture(scope="module")
def gateway(lab):
    gw = EspgwGateway(lab, lab.gwB, [office_connection(lab.office)], GatewaySettings(), name="office",
                      pools=[office_pool()])
    gw.start()
    yield gw
    print(gw.log_tail(60))  # shown when a test failed
    gw.stop()


@pytest.fixture(scope="module")
def laptop(lab, gateway):
    """The real espgw client daemon, behind cafe 1 next to the swarm."""
    client = EspgwGateway(lab, cast(Gateway, lab.hostA), [laptop_connection(CAFE1_CLIENTS, lab.office)],
                          GatewaySettings(), name="laptop").start()
    client.request("initiate", child="rw")
    wait_until(lambda: client.status().get("virtual_ips") and client.children(), 15,
               "the laptop's virtual IP and CHILD SA", interval=0.1, on_timeout=client.log_tail)
    yield client
    client.stop()


@pytest.fixture(scope="module")
def swarm(lab, gateway, laptop):
    groups = [(lab.hostA.ns, CAFE1_CLIENTS, SWARM_PER_CAFE[0]), (lab.lan2_ns, CAFE2_CLIENTS, SWARM_PER_CAFE[1])]
    with Swarm(groups, lab.office, DASHBOARD, OFFICE_LAN) as swarm:
        swarm.connect(timeout=60)
        yield swarm


def _leases(gw: EspgwGateway) -> list[tuple[str, str, str]]:
    """(address, online/offline, identity) from vici get-pools, as swanctl lists them."""
    done = subprocess.run(["swanctl", "--list-pools", "--leases", "--uri", f"unix://{gw.socket}.vici"],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    return LEASE.findall(done.stdout)


def _online(gw: EspgwGateway) -> dict[str, str]:
    return {identity: address for address, state, identity in _leases(gw) if state == "online"}


def test_a_hundred_ike_sas_with_a_hundred_distinct_leases(gateway, laptop, swarm):
    sas = gateway.ike_sas()
    assert len(sas) == CLIENTS and all(sa["state"] == "ESTABLISHED" for sa in sas)
    online = _online(gateway)
    assert len(online) == CLIENTS and len(set(online.values())) == CLIENTS
    for client in swarm.clients:
        assert online[client.identity] == client.vip
    assert online["laptop.lab"] == laptop.status()["virtual_ips"][0]["vips"][0]
    # each lease is its SA's: the gateway's CHILD SA to a client covers that client's address only
    remote_ts = sorted(c["remote_ts"][0] for sa in sas for c in sa["children"])
    assert remote_ts == sorted(f"{address}/32" for address in online.values())


def test_several_clients_share_a_public_address_told_apart_by_port(lab, gateway, swarm):
    by_address = collections.defaultdict(list)
    for sa in gateway.ike_sas():
        by_address[sa["remote_addr"]].append(sa["remote_port"])
        assert sa["nat_remote"] and sa["remote_vips"], sa
    assert set(by_address) == set(lab.public_addresses)
    cafe1, cafe2 = (by_address[a] for a in lab.public_addresses)
    assert len(cafe1) == SWARM_PER_CAFE[0] + 1 and len(cafe2) == SWARM_PER_CAFE[1]
    assert len(set(cafe1)) == len(cafe1) and len(set(cafe2)) == len(cafe2)


def test_every_ping_from_a_virtual_ip_comes_back_through_its_own_sa(lab, gateway, laptop, swarm):
    swarm.ping(timeout=15)
    for client in swarm.clients:
        assert client.answered == {1} and client.inbound is not None
        assert client.inbound.counters.packets == 1, client
        assert not client.counts, (client.identity, client.counts)  # nothing foreign arrived
    assert lab.ping(lab.hostA, DASHBOARD, count=2).ok, laptop.log_tail()
    errors = [line for line in gateway.log_path.read_text().splitlines() if '"level": "error"' in line]
    assert errors == []


def test_closed_clients_release_their_leases_and_get_them_back(gateway, swarm):
    leaving = swarm.clients[:5] + swarm.clients[-5:]  # from both cafes
    addresses = {c.identity: c.vip for c in leaving}
    swarm.disconnect(leaving)
    wait_until(lambda: len(gateway.ike_sas()) == CLIENTS - len(leaving), 10, "the gateway to delete the SAs")
    leases = _leases(gateway)
    offline = {identity: address for address, state, identity in leases if state == "offline"}
    assert offline == addresses
    assert sum(state == "online" for _a, state, _i in leases) == CLIENTS - len(leaving)
    swarm.connect(leaving, timeout=30)
    assert {c.identity: c.vip for c in leaving} == addresses
    swarm.ping(leaving, seq=2)
    assert len(_online(gateway)) == CLIENTS
