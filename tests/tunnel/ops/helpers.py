"""Shared by the configuration tests: the smallest valid espgw configuration."""

PSK_TEXT = "correct horse battery staple"

MINIMAL = f"""
[connections.office]
local_addrs = "192.0.2.1"
remote_addrs = "192.0.2.2"
[connections.office.children.lan]
local_ts = "10.0.0.0/24"
remote_ts = "10.0.5.0/24"
[secrets.ike-office]
id = "192.0.2.2"
secret = "{PSK_TEXT}"
"""
