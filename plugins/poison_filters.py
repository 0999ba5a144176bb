"""Poison-finding defenses (stage ``training``): activation clustering, spectral
signatures and the STRIP run-time trigger detector. Being written (issue 9)."""
