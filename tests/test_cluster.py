"""Cluster templates: a Slurm job array and a Kubernetes Job whose every node runs ``hpo launch``
against one shared database, and never a password written into them."""

from __future__ import annotations

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
        assert job["kind"] == "Job" and job["spec"]["parallelism"] == 3
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["hpo", "launch", name, "--gpus", "all"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
        env = {e["name"]: e for e in container["env"]}
        assert env["HPO_STORAGE"]["value"] == url


def test_cluster_templates_never_contain_the_password():
    from hpo.cluster import render

    assert "exec /opt/venv/bin/python -m hpo launch s --gpus all" in render(
        "slurm", "s", "postgresql+psycopg2://bob@db.internal/hpo", python="/opt/venv/bin/python")

    url = "postgresql+psycopg2://bob:t0psecret@db.internal/hpo"
    slurm = render("slurm", "s", url)
    k8s = render("kubernetes", "s", url)
    assert "t0psecret" not in slurm + k8s
    assert "HPO_STORAGE:?" in slurm and "secretKeyRef" in k8s
    with pytest.raises(HpoError, match="not SQLite"):
        render("slurm", "s", "sqlite:///hpo.db")
