"""Minimal-perturbation evasion attacks: Carlini & Wagner L2 and DeepFool."""
from __future__ import annotations
