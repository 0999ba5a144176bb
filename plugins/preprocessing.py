"""Input-transformation defenses attacked with BPDA: feature squeezing, spatial smoothing, JPEG."""
from __future__ import annotations
