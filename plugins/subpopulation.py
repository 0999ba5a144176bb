"""Subpopulation poisoning on tabular data (FeatureMatch, ClusterMatch). Being written
(issue 9)."""
