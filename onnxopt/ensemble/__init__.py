"""Ensembles: N models fused into one verified graph (mean, weighted, vote, stack) and serial chains."""
