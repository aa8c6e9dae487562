"""Cluster templates: a Slurm job array and a Kubernetes Job whose every node runs ``hpo launch``
against one shared database, and never a password written into them.

The Kubernetes Job is checked against the Kubernetes API's own schema (``kubernetes-validate``:
the OpenAPI definitions as strict JSON Schema, so an unknown field, a wrong type or a missing
required field fails); the Slurm job array runs on a real Slurm cluster in test_slurm.py.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import run_hpo, server_url
from hpo.errors import HpoError
from workers import make_study


@pytest.mark.parametrize("kind", ["slurm", "kubernetes"])
def test_cluster_templates_render_the_launch_command(kind, server_urls, tmp_path):
    import yaml

    url = server_url(server_urls, "postgresql")
    name = make_study(tmp_path, url, n=5)
    r = run_hpo("template", kind, name, "--storage", url, "--nodes", "3", "--gpus-per-node",
                "4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # 127.0.0.1 is each node itself: say so, once, on stderr (the template stays clean).
    assert r.stderr.count("hpo: warning:") == 1 and "127.0.0.1" in r.stderr
    text = r.stdout
    assert "must exist in the storage (hpo create SPEC)" in text
    if kind == "slurm":
        assert "#SBATCH --array=0-2" in text and "#SBATCH --gres=gpu:4" in text
        # The interpreter that wrote it (a venv's), not an `hpo` the nodes' PATH may lack.
        assert f"exec {sys.executable} -m hpo launch {name} --gpus all" in text
        assert f"export HPO_STORAGE={url}" in text
        check = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
        assert check.returncode == 0, check.stderr
    else:
        job = yaml.safe_load(text)
        valid_kubernetes_job(job)
        assert job["kind"] == "Job" and job["spec"]["parallelism"] == 3
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["hpo", "launch", name, "--gpus", "all"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
        env = {e["name"]: e for e in container["env"]}
        assert env["HPO_STORAGE"]["value"] == url


def test_cluster_templates_never_contain_the_password():
    from hpo.run.cluster import render

    assert "exec /opt/venv/bin/python -m hpo launch s --gpus all" in render(
        "slurm", "s", "postgresql+psycopg2://bob@db.internal/hpo", python="/opt/venv/bin/python")

    url = "postgresql+psycopg2://bob:t0psecret@db.internal/hpo"
    slurm = render("slurm", "s", url)
    k8s = render("kubernetes", "s", url)
    assert "t0psecret" not in slurm + k8s
    assert "HPO_STORAGE:?" in slurm and "secretKeyRef" in k8s
    with pytest.raises(HpoError, match="not SQLite"):
        render("slurm", "s", "sqlite:///hpo.db")


KUBERNETES_VERSION = "1.37"
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def valid_kubernetes_job(job: dict) -> None:
    """Fail unless ``job`` is a valid batch/v1 Job: the API's schema (strict: no unknown
    fields), plus the name and label rules the API server applies on top of it."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"not a valid Kubernetes {KUBERNETES_VERSION} Job: "
                    f"{'.'.join(map(str, e.path))}: {e.message}")
    name = job["metadata"]["name"]
    assert len(name) <= 63 and DNS_SUBDOMAIN.fullmatch(name), name
    for value in job["spec"]["template"]["metadata"]["labels"].values():
        assert isinstance(value, str) and len(value) <= 63 and LABEL_VALUE.fullmatch(value), value


def test_the_schema_check_catches_what_kubernetes_refuses():
    """The validator is not a rubber stamp: a misspelt field, a wrong type and a missing
    container name each fail, as they would in ``kubectl apply``."""
    import yaml

    from hpo.run.cluster import render

    good = render("kubernetes", "s", "postgresql+psycopg2://bob@db.internal/hpo")
    valid_kubernetes_job(yaml.safe_load(good))
    for broken in (good.replace("command:", "commands:"),
                   good.replace("parallelism: 1", "parallelism: one"),
                   good.replace("- name: hpo\n", "- \n")):
        assert broken != good
        with pytest.raises(pytest.fail.Exception, match="not a valid Kubernetes"):
            valid_kubernetes_job(yaml.safe_load(broken))


@pytest.mark.parametrize("study", ["digits", 'the "best" run', "ÉTUDE-ü", "x" * 49 + "-y" * 20,
                                   "123", "true"])
@pytest.mark.parametrize("gpus", [0, 2])
def test_any_study_name_gives_a_valid_kubernetes_job_and_slurm_script(study, gpus):
    import yaml

    from hpo.run.cluster import render

    url = "postgresql+psycopg2://bob@db.internal/hpo?application_name=a'b\"c"
    job = yaml.safe_load(render("kubernetes", study, url, nodes=2, gpus=gpus,
                                checkpoint_dir="/shared/my ckpts"))
    valid_kubernetes_job(job)
    container = job["spec"]["template"]["spec"]["containers"][0]
    workers = ["--gpus", "all"] if gpus else ["--workers", "1"]
    assert container["command"] == ["hpo", "launch", study, *workers]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"HPO_STORAGE": url, "HPO_CHECKPOINT_DIR": "/shared/my ckpts"}
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/shared/my ckpts",
                                                                   "/dev/shm"]
    # No GPU asked for where the nodes have none (a pod asking for nvidia.com/gpu would never
    # be scheduled there).
    assert container["resources"] == (
        {"requests": {"cpu": "8", "memory": "32Gi"},
         "limits": {"memory": "32Gi", "nvidia.com/gpu": gpus}} if gpus
        else {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "16Gi"}})

    script = render("slurm", study, url, nodes=2, gpus=gpus, python="/opt/venv/bin/python",
                    checkpoint_dir="/shared/my ckpts")
    assert ("#SBATCH --gres=gpu:2" in script) == bool(gpus)
    # What bash makes of it: the launch command's words and the environment it exports.
    probe = script.replace("exec ", 'printf "%s\\n" "$HPO_STORAGE" "$HPO_CHECKPOINT_DIR" ', 1)
    r = subprocess.run(["bash", "-c", probe], input="", text=True, capture_output=True,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [url, "/shared/my ckpts", "/opt/venv/bin/python", "-m",
                                     "hpo", "launch", study, *workers]


def test_every_pod_of_the_kubernetes_job_draws_its_own_parameters(monkeypatch):
    """Each pod's launcher numbers its workers from 0; the Job is Indexed, so each pod has
    ``$JOB_COMPLETION_INDEX``, which offsets its workers' sampler seeds (else every pod's
    first trial would try the same parameters)."""
    import yaml

    from hpo.run.cluster import render
    from hpo.run.worker import WORKER_INDEX_VAR, worker_identity

    job = yaml.safe_load(render("kubernetes", "s", "postgresql+psycopg2://bob@db/hpo", nodes=3))
    assert job["spec"]["completionMode"] == "Indexed"
    valid_kubernetes_job(job)

    for var in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(WORKER_INDEX_VAR, "0")
    offsets = set()
    for pod in ("0", "1", "2"):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", pod)
        offsets.add(worker_identity()[1])
    assert len(offsets) == 3


@pytest.mark.slow
def test_templates_keep_each_trials_gang_inside_one_node(server_urls, tmp_path):
    """A study of 2-GPU trials (``resources.devices_per_trial: 2``): 8 GPUs a node make 4
    trials at a time there, said in the template; 3 GPUs a node cannot hold whole gangs, so
    the template is refused (exit 2, one line); CPU nodes get cores for both ranks."""
    import yaml

    from hpo.run.cluster import render

    url = server_url(server_urls, "postgresql")
    spec = tmp_path / "gang.yaml"
    spec.write_text("task: {kind: image_classification, model: resnet18, dataset: {name: digits}}\n"
                    "search_space: {lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}}\n"
                    "resources: {devices_per_trial: 2}\n")
    assert run_hpo("create", str(spec), "--storage", url, cwd=tmp_path).returncode == 0
    r = run_hpo("template", "slurm", "gang", "--storage", url, "--gpus-per-node", "8",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "8 GPUs, 4 trial(s) of 2 GPUs at a time" in r.stdout
    assert "#SBATCH --gres=gpu:8" in r.stdout
    r = run_hpo("template", "kubernetes", "gang", "--storage", url, "--gpus-per-node", "3",
                cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1] == (
        "hpo: error: --gpus-per-node 3: the study's trials each take 2 GPUs of one node "
        "(resources.devices_per_trial); give a multiple of 2")
    job = yaml.safe_load(render("kubernetes", "gang", url, gpus=0, devices_per_trial=2))
    valid_kubernetes_job(job)
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"memory": "32Gi"}}


# --------------------------------------------------------------------------------------------
# What the cluster asks of each machine: Slurm's time, partition and account; Kubernetes'
# CPU and memory, and a shared-memory /dev/shm for the DataLoader workers.


def test_slurm_template_takes_time_partition_and_account(server_urls, tmp_path):
    from hpo.run.cluster import render

    url = server_url(server_urls, "postgresql")
    name = make_study(tmp_path, url, n=5)
    r = run_hpo("template", "slurm", name, "--storage", url, "--time", "2-12:30:00",
                "--partition", "gpu,gpu-long", "--account", "proj_42.a", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for line in ("#SBATCH --time=2-12:30:00", "#SBATCH --partition=gpu,gpu-long",
                 "#SBATCH --account=proj_42.a"):
        assert lines.count(line) == 1, (line, r.stdout)
    # Every #SBATCH line comes before the first command, or Slurm ignores it.
    first_command = next(i for i, x in enumerate(lines) if x and not x.startswith("#"))
    assert max(i for i, x in enumerate(lines) if x.startswith("#SBATCH")) < first_command
    check = subprocess.run(["bash", "-n"], input=r.stdout, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr

    # Defaults: a day, and the cluster's default partition and account (no line for them).
    default = render("slurm", "s", "postgresql+psycopg2://bob@db.internal/hpo")
    assert "#SBATCH --time=24:00:00" in default
    assert "--partition" not in default and "--account" not in default
    for given in ("90", "30:00", "4:00:00", "1-0", "1-6:00", "7-00:00:00", "UNLIMITED"):
        assert f"#SBATCH --time={given}\n" in render(
            "slurm", "s", "postgresql+psycopg2://bob@db.internal/hpo", time=given)


def _k8s_resources(text: str) -> tuple[dict, dict]:
    import yaml

    job = yaml.safe_load(text)
    valid_kubernetes_job(job)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    shm = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert len(shm) == 1, container["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == shm[0]["name"])
    assert volume["emptyDir"]["medium"] == "Memory", volume
    return container["resources"], volume["emptyDir"]


def test_kubernetes_job_requests_cpu_and_memory_and_mounts_shared_memory(server_urls, tmp_path):
    from hpo.run.cluster import render

    url = server_url(server_urls, "postgresql")
    name = make_study(tmp_path, url, n=5)
    r = run_hpo("template", "kubernetes", name, "--storage", url, "--gpus-per-node", "2",
                "--cpu", "6500m", "--memory", "40Gi", "--shm-size", "12Gi", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    resources, shm = _k8s_resources(r.stdout)
    assert resources == {"requests": {"cpu": "6500m", "memory": "40Gi"},
                         "limits": {"memory": "40Gi", "nvidia.com/gpu": 2}}
    assert shm["sizeLimit"] == "12Gi"

    # Defaults, per machine: 4 cores and 16 GiB per GPU (or per CPU worker), a quarter of
    # the memory as /dev/shm (it counts against the memory limit).
    db = "postgresql+psycopg2://bob@db.internal/hpo"
    resources, shm = _k8s_resources(render("kubernetes", "s", db, gpus=4))
    assert resources == {"requests": {"cpu": "16", "memory": "64Gi"},
                         "limits": {"memory": "64Gi", "nvidia.com/gpu": 4}}
    assert shm["sizeLimit"] == "16Gi"
    resources, shm = _k8s_resources(render("kubernetes", "s", db, gpus=0))
    assert resources == {"requests": {"cpu": "4", "memory": "16Gi"},
                         "limits": {"memory": "16Gi"}}
    assert shm["sizeLimit"] == "4Gi"
    resources, shm = _k8s_resources(render("kubernetes", "s", db, gpus=1, memory="10G"))
    assert resources["requests"]["memory"] == "10G" and shm["sizeLimit"] == "2500M"


@pytest.mark.parametrize("kind, flags, named", [
    ("slurm", ["--time", "25 hours"], "--time"),
    ("slurm", ["--time", "0"], "--time"),
    ("slurm", ["--time", "1:75:00"], "--time"),
    ("slurm", ["--partition", "gpu; rm -rf ~"], "--partition"),
    ("slurm", ["--account", ""], "--account"),
    ("kubernetes", ["--cpu", "0"], "--cpu"),
    ("kubernetes", ["--cpu", "four"], "--cpu"),
    ("kubernetes", ["--memory", "16GB"], "--memory"),
    ("kubernetes", ["--memory", "0Gi"], "--memory"),
    ("kubernetes", ["--shm-size", "-1Gi"], "--shm-size"),
    ("kubernetes", ["--memory", "8Gi", "--shm-size", "8Gi"], "--shm-size"),
    ("kubernetes", ["--partition", "gpu"], "--partition"),
    ("slurm", ["--memory", "8Gi"], "--memory"),
])
def test_bad_cluster_flags_are_one_line_and_write_nothing(kind, flags, named, server_urls,
                                                          tmp_path):
    url = server_url(server_urls, "postgresql")
    name = make_study(tmp_path, url, n=5)
    r = run_hpo("template", kind, name, "--storage", url, *flags, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    errors = [x for x in r.stderr.splitlines() if "warning" not in x]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    # The flag's own check, not argparse's "unrecognized arguments".
    assert named in errors[0] and "error" in errors[0], errors
    assert "unrecognized" not in errors[0], errors
