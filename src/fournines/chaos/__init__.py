"""Chaos engineering: faults as policies, runtime fault control, a fault proxy, network faults."""
