"""Clean-label poisoning: feature collision (Poison Frogs). Being written (issue 9)."""
