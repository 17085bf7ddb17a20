"""Jobs as the tests run them from code: a plan built directly (what a job does with its settings), run by the same
runner as the command line. The tests of flags and messages keep the command line (`classify_images.main([...])`)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

from pipelines import runner
from pipelines.classify_images import Classify, ClassifyPlan
from pipelines.options import LabelChoice, RunTarget, StoredVectors
from pipelines.relabel import Relabel, RelabelPlan
from transforms.backends import Backend, get_backend
from transforms.rank import Decision


def target(output: Union[str, Path], overwrite: bool = False, file_format: str = "parquet",
           num_shards: int = 0) -> RunTarget:
    return RunTarget(str(output), overwrite, file_format, num_shards)


def classify(inputs: str, output: Union[str, Path], labels: str = "everyday", decision: Decision = Decision(),
             backend: Backend = None, overwrite: bool = False, num_shards: int = 0, **settings) -> int:
    """classify_images with `settings` (ClassifyPlan's fields: keep_embeddings, explain, previous...); its exit
    status."""
    plan = ClassifyPlan(target=target(output, overwrite, num_shards=num_shards),
                        backend=backend or get_backend("local"), input=inputs,
                        labels=LabelChoice.of(labels, decision), **settings)
    return runner.execute(Classify(), plan)


def relabel(embeddings: Union[str, Path], output: Union[str, Path], labels: str, decision: Decision = Decision(),
            backend: Backend = None, **settings) -> int:
    """relabel of the vectors a classify run kept, with `settings` (RelabelPlan's fields); its exit status."""
    backend = backend or get_backend("local")
    plan = RelabelPlan(target=target(output), backend=backend, stored=StoredVectors.of(str(embeddings), backend),
                       labels=LabelChoice.of(labels, decision), **settings)
    return runner.execute(Relabel(), plan)
