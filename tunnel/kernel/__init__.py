"""What the kernel offers the gateway: TUN, raw ESP and UDP sockets, the TX ring, routes, path MTU.

Lowest layer of tunnel/: imports nothing else of it."""
