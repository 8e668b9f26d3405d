"""Execution by configuration: in-process (default), multiprocess or one Kubernetes job per step, and the pod spec
a model step gets on Kubernetes, rendered without a cluster."""

import dagster as dg
import pytest

from orchestration.execution import executor


def test_the_executor_is_chosen_by_configuration(monkeypatch):
    monkeypatch.delenv("CELLREP_EXECUTOR", raising=False)
    assert executor() is dg.in_process_executor
    monkeypatch.setenv("CELLREP_EXECUTOR", "multiprocess")
    assert executor() is dg.multiprocess_executor
    assert executor("k8s").name == "k8s"
    with pytest.raises(ValueError, match="CELLREP_EXECUTOR='ray': use one of in_process, multiprocess, k8s"):
        executor("ray")


def test_the_definitions_use_the_configured_executor(monkeypatch):
    import importlib

    import orchestration.definitions as definitions

    monkeypatch.setenv("CELLREP_EXECUTOR", "k8s")
    try:
        assert importlib.reload(definitions).defs.executor.name == "k8s"
    finally:
        monkeypatch.delenv("CELLREP_EXECUTOR")
        assert importlib.reload(definitions).defs.executor is dg.in_process_executor


def test_a_model_step_renders_a_pod_that_requests_a_gpu():
    """The model assets' op tags, through dagster-k8s's own parsing and job construction (what the k8s executor
    does for each step): the container asks for one GPU, the pod tolerates GPU nodes; a step without the tags
    (the cells asset) asks for none."""
    from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    config = DagsterK8sJobConfig(job_image="registry.example/cellrep:1", dagster_home="/opt/dagster/home",
                                 instance_config_map="dagster-instance")

    def pod(asset: str):
        node = graph.get(dg.AssetKey(asset))
        tags = {k: v for k, v in node.assets_def.op.tags.items()}
        job = construct_dagster_k8s_job(config, ["dagster", "api", "execute_step"], "cellrep-step",
                                        get_user_defined_k8s_config(tags), component="step_worker")
        return job.spec.template.spec

    def gpu_limit(spec) -> str | None:
        res = spec.containers[0].resources or {}
        limits = res.get("limits") if isinstance(res, dict) else res.limits
        return (limits or {}).get("nvidia.com/gpu")

    for asset in ("plate_model", "synthetic_polymorphic_model", "dataset_model", "synthetic_punctate_benchmark"):
        spec = pod(asset)
        assert gpu_limit(spec) == "1", asset
        tolerations = [t if isinstance(t, dict) else t.to_dict() for t in spec.tolerations]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}.items() <= \
            tolerations[0].items()
        assert spec.containers[0].image == "registry.example/cellrep:1"
    assert gpu_limit(pod("plate_cells")) is None
