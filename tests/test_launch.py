"""`cpt-jax launch`: the kits it writes carry the target's slices, hosts and chips, parse as what
their tool reads (a JobSet, bash), and the SLURM one trains a plan with several processes when
SLURM is emulated on this machine (a stand-in `srun` that starts the tasks with SLURM's variables)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cpt_jax.cli.main import main
from cpt_jax.train.metrics import read_jsonl

PLAN = {
    "model": {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 4,
              "num_kv_heads": 2, "max_position_embeddings": 64},
    "data": {"seq_len": 16, "global_batch_size": 8,
             "sources": {"a": {"kind": "synthetic", "seed": 1, "num_docs": 64, "eval_docs": 4}}},
    "mesh": {"data": 1, "fsdp": -1, "tensor": 1},
    "checkpoint": {"every": 3, "keep_last": 5},
    "eval": {"every": 100, "batches": 1},
    "log": {"every": 1, "tensorboard": False, "progress": False},
    "phases": [{"name": "p0", "init": "scratch", "steps": 3, "mixture": {"a": 1.0},
                "schedule": {"peak_lr": 3e-3, "warmup_steps": 1}}],
}


def write_plan(tmp_path: Path, run_dir: Path, **mesh) -> Path:
    plan = {**PLAN, "run_dir": str(run_dir), "mesh": {**PLAN["mesh"], **mesh}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_gke_jobset_for_two_v5p_slices(tmp_path, capsys):
    plan = write_plan(tmp_path, tmp_path / "run", dcn_data=2)
    out = tmp_path / "jobset.yaml"
    rc = main(["launch", str(plan), "--target", "v5p-256", "--slices", "2", "--format", "gke", "--image", "img:1",
               "--name", "cpt", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    doc = yaml.safe_load(out.read_text())
    assert doc["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and doc["kind"] == "JobSet"
    job = doc["spec"]["replicatedJobs"][0]
    assert job["replicas"] == 2  # slices
    spec = job["template"]["spec"]
    assert spec["parallelism"] == spec["completions"] == 32  # v5p-256: 128 chips, 4 per host
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                   "cloud.google.com/gke-tpu-topology": "4x4x8"}
    container = pod["containers"][0]
    assert container["resources"]["limits"]["google.com/tpu"] == 4
    assert container["command"][-1] == f"cpt-jax train {plan} distributed.mode=auto"
    env = {e["name"]: e for e in container["env"]}
    assert env["MEGASCALE_NUM_SLICES"]["value"] == "2" and "MEGASCALE_SLICE_ID" in env


def test_single_host_v6e_and_tpu_vm_script(tmp_path, capsys):
    plan = write_plan(tmp_path, tmp_path / "run")
    out = tmp_path / "jobset.yaml"
    assert main(["launch", str(plan), "--target", "v6e-8", "--format", "gke", "--image", "i", "--out", str(out)]) == 0
    spec = yaml.safe_load(out.read_text())["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert spec["parallelism"] == 1 and spec["template"]["spec"]["containers"][0]["resources"]["limits"][
        "google.com/tpu"] == 8
    assert spec["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "2x4"
    script = tmp_path / "tpu.sh"
    assert main(["launch", str(plan), "--target", "tpu-v5e:4x4", "--format", "tpu-vm", "--name", "s",
                 "--out", str(script)]) == 0
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "--accelerator-type=v5litepod-16" in text
    assert text.count("--worker=all") == 1 and "gcloud compute tpus tpu-vm ssh s " in text
    assert os.stat(script).st_mode & stat.S_IXUSR


@pytest.mark.parametrize("args, message", [
    (["--target", "v5p-256", "--slices", "2", "--format", "gke", "--image", "i"], "mesh.dcn_data=2"),
    (["--target", "h100x16", "--format", "gke", "--image", "i"], "use --format slurm"),
    (["--target", "v5p-8", "--format", "slurm"], "for TPUs use --format gke or tpu-vm"),
    (["--target", "v5p-8", "--format", "gke"], "needs --image"),
    (["--target", "h100x8", "--format", "slurm", "mesh.fsdp=3"], "does not split the 8 devices"),
    (["--target", "tpu-v9:2x2", "--format", "gke", "--image", "i"], "unknown target"),
])
def test_bad_launches_are_one_error_line(tmp_path, capsys, args, message):
    plan = write_plan(tmp_path, tmp_path / "run")
    out = tmp_path / "kit"
    assert main(["launch", str(plan), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and message in err and not out.exists()


def test_an_existing_kit_is_not_overwritten(tmp_path, capsys):
    plan = write_plan(tmp_path, tmp_path / "run")
    out = tmp_path / "kit.sh"
    out.write_text("mine")
    assert main(["launch", str(plan), "--target", "h100x8", "--format", "slurm", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "mine"


FAKE_SRUN = """#!/usr/bin/env bash
# Stand-in for SLURM's srun on one machine: start --ntasks copies of the command with the variables
# srun gives each task, and fail if any fails.
set -u
n=1
while [[ $1 == --* ]]; do case $1 in --ntasks=*) n=${1#--ntasks=};; esac; shift; done
pids=()
for ((i = 0; i < n; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS=$n SLURM_STEP_NUM_NODES=$n SLURM_STEP_NODELIST=localhost "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait $p || rc=$?; done
exit $rc
"""


def free_slurm_port() -> int:
    """A SLURM job id whose JAX coordinator port (61440 + id % 4096) is free here."""
    for job in range(1000, 4096):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 61440 + job))
                return job
            except OSError:
                continue
    raise RuntimeError("no free port")


@pytest.mark.slow
def test_the_slurm_kit_trains_with_two_processes(tmp_path):
    run_dir = tmp_path / "run"
    plan = write_plan(tmp_path, run_dir)
    script = tmp_path / "job.sbatch"
    big = tmp_path / "big.sbatch"
    assert main(["launch", str(plan), "--target", "h100x16", "--format", "slurm", "--out", str(big)]) == 0
    text = big.read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --gpus-per-node=8" in text and "--signal=TERM@" in text
    assert "#SBATCH --ntasks-per-node=8" in text and "srun --kill-on-bad-exit=1 --ntasks=16 " in text
    # Run one node of two GPUs here: two tasks, as srun would start them.
    assert main(["launch", str(plan), "--target", "h100x2", "--format", "slurm", "--out", str(script)]) == 0
    assert "--ntasks=2 " in script.read_text()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    (bin_dir / "cpt-jax").write_text(f"#!/usr/bin/env bash\nexec {sys.executable} -m cpt_jax.cli.main \"$@\"\n")
    (bin_dir / "cpt-jax").chmod(0o755)
    drop = ("CPT_JAX_", "SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR", "JAX_PROCESS", "TPU_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_JOB_ID=str(free_slurm_port()), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert (done.stdout + done.stderr).count("done: 3 steps") == 2  # both tasks trained the one run
    assert (run_dir / "checkpoints" / "3").is_dir()


def test_the_example_kits_in_tools_are_what_launch_writes_today(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cpt-jax").write_text(f"#!/usr/bin/env bash\nexec {sys.executable} -m cpt_jax.cli.main \"$@\"\n")
    (bin_dir / "cpt-jax").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "JAX_PLATFORMS": "cpu"}
    subprocess.run(["bash", str(repo / "tools/launch/make_kits.sh"), str(tmp_path)], env=env, check=True,
                   capture_output=True, timeout=300)
    kits = sorted(p.name for p in (repo / "tools/launch").iterdir() if p.name != "make_kits.sh")
    assert len(kits) == 3
    for name in kits:
        assert (tmp_path / name).read_text() == (repo / "tools/launch" / name).read_text(), name
