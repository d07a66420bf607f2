"""Tests of onnxopt.core."""
