"""The policies: one module per resilience pattern, each a frozen-config policy object."""
