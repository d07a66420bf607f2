"""``onnxopt optimize``: candidates (FP32, INT8, pruned, FP16) built, verified, timed against
the input on the target, and the fastest one within the accuracy budget chosen."""
