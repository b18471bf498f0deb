"""Outbound adapters: one module per target."""
