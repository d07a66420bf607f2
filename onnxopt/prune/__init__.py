"""Pruning on the ONNX graph: magnitude (zeros), channels by dependency group with
least-squares reconstruction, and residual blocks; see ``api.prune``."""
