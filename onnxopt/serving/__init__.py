"""``onnxopt.serving``: what a deployed model needs beside its graph.

- ``options.py``: ``SessionConfig``, the ONNX Runtime session options as one validated,
  serializable object (the one place that builds ``ort.SessionOptions``);
- ``carry.py``: the options carried in the model (ORT's own ``ort_config`` metadata plus
  onnxopt's provenance), ``session(path)``, and the check that ORT accepts them;
- ``tune.py``: the session-option search (``onnxopt tune``, and inside ``optimize``);
- ``coldstart.py``: session creation, first run and peak RSS in fresh subprocesses;
- ``offline.py``: ONNX Runtime's own optimized graph saved as a candidate;
- ``ortformat.py``: the same in ONNX Runtime's ``.ort`` flatbuffer format, verified, with the
  options it carries.
"""
