"""How a run executes its steps, chosen by configuration, not by code.

``CELLREP_EXECUTOR`` (read when the Definitions load):

* ``in_process`` (default): every step of a run in the run's process. One machine; the step start-up of the
  multiprocess executor (~7 s of imports per step here) is saved (DESIGN.md).
* ``multiprocess``: one process per step on the run's machine (Dagster's default executor).
* ``k8s``: one Kubernetes job per step (``dagster_k8s.k8s_job_executor``; install ``cellrep[k8s]``). Steps of the
  model assets carry ``assets.resources.GPU_OP_TAGS``: their pods request one GPU and tolerate GPU nodes; the
  ``gpu`` pool still bounds how many run at once. Image, namespace and environment come from the run launcher
  of the deployment (``docs/deploy/helm-values.yaml``).
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTORS = ("in_process", "multiprocess", "k8s")


def executor(kind: str | None = None) -> dg.ExecutorDefinition:
    """The executor named by ``kind`` (default: ``CELLREP_EXECUTOR``, else ``in_process``)."""
    kind = (kind or os.environ.get("CELLREP_EXECUTOR") or "in_process").strip()
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "multiprocess":
        return dg.multiprocess_executor
    if kind == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError as err:
            raise RuntimeError("CELLREP_EXECUTOR=k8s needs dagster-k8s: pip install 'cellrep[k8s]'") from err
        return k8s_job_executor
    raise ValueError(f"CELLREP_EXECUTOR={kind!r}: use one of {', '.join(EXECUTORS)}")
