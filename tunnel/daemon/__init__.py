"""``espgw run``: the loop (gateway), on-demand traps and the control socket's reports (status)."""
