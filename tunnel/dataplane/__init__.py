"""The per-packet path: installed CHILD SAs, receive, transmit, the SPD, GRO, fragments, ICMP.

Uses tunnel.kernel; never the daemon, the operator surface or the lab."""
