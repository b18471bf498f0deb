"""Inbound and outbound protocol adapters; they depend on bridge, never the reverse."""
