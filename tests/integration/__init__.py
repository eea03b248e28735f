"""Integration tests: real processes, real sockets, a real Docker engine, an AWS emulator."""
