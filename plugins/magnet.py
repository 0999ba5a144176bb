"""MagNet: an autoencoder reformer and a reconstruction-error detector."""
from __future__ import annotations
