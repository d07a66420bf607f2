"""Simplification: constant folding, dead code and duplicate weights removal (exact transforms)."""
