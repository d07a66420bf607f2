"""Tests of onnxopt.simplify."""
