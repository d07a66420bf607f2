"""Core machinery: the pass protocol, reports, the verifying pipeline, recipes, the registry."""

from .passes import Context, Pass, PassReport, PassResult
from .pipeline import PipelineResult, run_pipeline
from .result import Result

__all__ = ["Context", "Pass", "PassReport", "PassResult", "PipelineResult", "Result", "run_pipeline"]
