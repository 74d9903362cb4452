"""Pipelines: stages from ``[stages.NAME]`` that compose, each a recorded run, skipped when nothing
they depend on changed. ``stages`` reads them and their graph, ``runner`` decides and runs,
``view`` draws the graph, ``forward`` passes stop signals to the stages' processes.

A stage's cache key is the sha256 of its command, its params, the closure hash of its environment,
the git tree ids of the files it depends on (the whole commit by default) and the exact version
ids of its input data. A succeeded run with the same key is reused: its outputs (uri + version id)
feed the next stages and nothing runs. Change one store path of the environment and the key
changes, which is what DVC's stage cache cannot see.

Stages are linked by data: an input URI that another stage declares as an output makes that stage
run first (``after`` adds links that carry no data).

The scheduler never waits on a worker that cannot report: every stage's thread settles an outcome
whatever it raises, and an unexpected exception stops the pipeline with an error. SIGINT, SIGTERM
and SIGHUP stop it too: no new stage starts, the running ones get the signal (forward.py) and are
waited for, so each is recorded with how it ended.
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
