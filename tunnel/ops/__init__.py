"""The operator's surface: configuration, control socket, CLI, logging, key export.

Imports nothing else of tunnel/: the daemon uses it, and tunnel.main wires the CLI to the daemon."""
