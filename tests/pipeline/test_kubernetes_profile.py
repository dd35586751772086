"""The Kubernetes job spec of pipeline/profiles/kubernetes, without a cluster.

The plugin's own `run_job` renders the V1Job; the job handed to it carries the resources Snakemake gives a
rule under this profile: the Snakefile's (the paper profile's threads, mem_mb, gpu) with the profile's
default- and set-resources, as parsed by Snakemake's own profile reader. The API call that would create
the job is the stand-in: it keeps the body.
"""
from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

kubernetes_plugin = pytest.importorskip("snakemake_executor_plugin_kubernetes", reason="the Kubernetes executor "
                                        "plugin is missing: `pip install -e .[cluster]` (make test installs it)")

PROFILE = Path(__file__).resolve().parents[2] / "pipeline" / "profiles" / "kubernetes" / "config.yaml"


def parsed_profile(monkeypatch, **env) -> dict:
    from snakemake.profiles import ProfileConfigFileParser

    for key in [k for k in __import__("os").environ if k.startswith("MDR_K8S_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with PROFILE.open() as f:
        return ProfileConfigFileParser().parse(f)


def rule_resources(profile: dict, rule: str, snakefile: dict) -> dict:
    """A rule's resources as Snakemake resolves them: defaults, then the Snakefile's, then set-resources."""
    resources = dict(item.split("=", 1) for item in profile.get("default-resources", []))
    resources.update(snakefile)
    for item in profile.get("set-resources", []):
        name, assignment = item.split(":", 1)
        if name == rule:
            key, value = assignment.split("=", 1)
            resources[key] = value
    return {k: int(v) if isinstance(v, str) and v.isdigit() else v for k, v in resources.items()}


def render(profile: dict, resources: dict) -> dict:
    """The V1Job the plugin would create for a job with these resources, as the API would receive it."""
    import kubernetes.client

    created = []
    executor = kubernetes_plugin.Executor.__new__(kubernetes_plugin.Executor)
    executor.logger = SimpleNamespace(debug=lambda *a: None, info=lambda *a: None, error=lambda *a: None)
    executor.format_job_exec = lambda job: "python -m snakemake --the-job"
    executor.container_image = profile.get("container-image")
    executor.persistent_volumes = [kubernetes_plugin.PersistentVolume.parse(v)
                                   for v in profile.get("kubernetes-persistent-volumes", [])]
    executor.k8s_cpu_scalar, executor.k8s_service_account_name, executor.privileged = 0.95, None, False
    executor.secret_envvars, executor.namespace, executor.run_namespace = {}, "default", "run"
    executor.workflow = SimpleNamespace(executor_settings=SimpleNamespace(omit_job_cleanup=False))
    executor.batchapi = SimpleNamespace(create_namespaced_job=lambda ns, body: created.append(body))
    executor.report_job_submission = lambda info: None
    executor.lock = threading.Lock()
    job = SimpleNamespace(resources=resources, jobid=1, attempt=1, is_containerized=False)
    executor.run_job(job)
    assert len(created) == 1
    return kubernetes.client.ApiClient().sanitize_for_serialization(created[0])


def paper_train_resources() -> dict:
    from mdr.grid import PARAMS_DIR

    res = yaml.safe_load((PARAMS_DIR / "profiles" / "paper.yaml").read_text())["resources"]  # the Snakefile's
    return {"_cores": res["threads"], "_nodes": 1, "mem_mb": res["mem_mb"], "gpu": res["gpu"]}


def test_a_gpu_job_requests_one_nvidia_gpu_on_the_gpu_nodes(monkeypatch):
    profile = parsed_profile(monkeypatch, MDR_K8S_IMAGE="registry.example.org/mdr-bench:1",
                             MDR_K8S_GPU_MACHINE_TYPE="a2-highgpu-1g", MDR_K8S_MACHINE_TYPE="n2-standard-8")
    spec = render(profile, rule_resources(profile, "train", paper_train_resources()))
    pod = spec["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example.org/mdr-bench:1"
    # paper profile: 1 GPU, 8 threads (95% of them requested, the plugin's default scalar), 32 GB
    assert container["resources"]["requests"] == {"nvidia.com/gpu": "1", "cpu": "7600m", "memory": "32000M"}
    # Kubernetes takes GPUs from the limits: the profile's scale 0 sets them
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1", "cpu": "8000m", "memory": "32000M"}
    assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "a2-highgpu-1g"}  # the GPU type wins
    # data/ and runs/ are the shared volumes, where the job's working directory expects them
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"workdir": "/workdir", "mdr-data": "/workdir/data", "mdr-runs": "/workdir/runs"}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"mdr-data": "mdr-data", "mdr-runs": "mdr-runs"}
    assert spec["spec"]["backoffLimit"] == 0  # a failed pod is retried by Snakemake (--retries), not by Kubernetes


def test_a_cpu_job_requests_no_gpu_and_claims_can_be_renamed(monkeypatch):
    profile = parsed_profile(monkeypatch, MDR_K8S_DATA_CLAIM="lab-data", MDR_K8S_RUNS_CLAIM="lab-runs")
    # `prepare` declares mem_mb only and runs on one core (Snakefile)
    spec = render(profile, rule_resources(profile, "prepare", {"_cores": 1, "_nodes": 1, "mem_mb": 4000}))
    pod = spec["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "950m", "memory": "4000M"}
    assert "limits" not in container["resources"]  # CPU jobs may use idle cores beyond their request
    assert "tolerations" not in pod and pod.get("nodeSelector") in (None, {})
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"lab-data": "lab-data", "lab-runs": "lab-runs"}


def test_every_gpu_rule_names_its_gpu_manufacturer(monkeypatch):
    # without gpu_manufacturer the plugin refuses a job that declares `gpu` (train, evaluate, tune do)
    profile = parsed_profile(monkeypatch)
    for rule in ("train", "evaluate", "tune"):
        assert rule_resources(profile, rule, {})["gpu_manufacturer"] == "nvidia"
    from snakemake_interface_common.exceptions import WorkflowError

    with pytest.raises(WorkflowError, match="gpu_manufacturer"):
        render(profile, {"_cores": 1, "gpu": 1})
