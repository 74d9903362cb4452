"""Pipelines: stages from ``[stages.NAME]`` that compose, each a recorded run, skipped when nothing
they depend on changed. ``stages`` reads them and their graph, ``runner`` decides and runs,
``envcache`` keeps the out path a stage's flake builds to (no ``nix build`` for an unchanged
commit), ``view`` draws the graph, ``forward`` passes stop signals to the stages' processes.

How a stage's cache key is made, when a cached run is reused and how a signal stops the pipeline:
``nixrepro.pipeline.runner``.
"""

from .runner import (
    CACHE_DIR,
    LAST_FILE,
    DataResolver,
    PipelineRunner,
    StageOutcome,
    cache_key,
    last_outcomes,
    plan,
    stale_reason,
)
from .stages import Output, Pipeline, Stage
from .view import graph_dot, graph_text

__all__ = ["CACHE_DIR", "LAST_FILE", "DataResolver", "Output", "Pipeline", "PipelineRunner", "Stage",
           "StageOutcome", "cache_key", "graph_dot", "graph_text", "last_outcomes", "plan",
           "stale_reason"]
