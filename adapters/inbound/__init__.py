"""Inbound adapters: bytes or HTTP in, RawMessage to bridge.intake."""
