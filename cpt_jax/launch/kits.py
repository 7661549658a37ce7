"""Launch kits: the files that start one plan on every host of a real cluster, filled in from the
plan and the target (how many slices, hosts and chips per host), so that nobody copies a page of
BUILD.md by hand.

- `gke`: a JobSet manifest (jobset.x-k8s.io/v1alpha2), one replicated job per TPU slice, as XPK
  writes them: a pod per host, the TPU node selectors, `google.com/tpu` chips per host, and the
  MEGASCALE_* variables that JAX reads to join several slices over DCN.
- `tpu-vm`: a bash script that runs the same command on every worker of a Cloud TPU VM slice
  (`gcloud compute tpus tpu-vm ssh --worker=all`), or of each slice of a multislice queued resource.
- `slurm`: an sbatch script for GPU nodes: one process per GPU started by `srun`, as JAX's SLURM
  detection expects (each task drives the GPU numbered by its SLURM_LOCALID); SIGTERM reaches the
  processes a grace period before the time limit and the job requeues, and the same command
  resumes from the last checkpoint.

Every host runs `cpt-jax train PLAN distributed.mode=auto`: JAX finds the cluster itself (TPU
VM metadata, the GKE/XPK variables, SLURM's variables), see cpt_jax/distributed.py.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import yaml

from cpt_jax.errors import UserError
from cpt_jax.estimate.targets import GPUS_PER_HOST, HOST_CHIPS, TargetInfo
from cpt_jax.sharding.mesh import MeshConfig

FORMATS = ("gke", "tpu-vm", "slurm")
# GKE node labels of each TPU generation (cloud.google.com/gke-tpu-accelerator).
GKE_ACCELERATOR = {"v4": "tpu-v4-podslice", "v5e": "tpu-v5-lite-podslice", "v5p": "tpu-v5p-slice",
                   "v6e": "tpu-v6e-slice"}
# Cloud TPU accelerator types: v4/v5p count TensorCores (two per chip), v5e/v6e count chips.
TPU_VM_TYPE = {"v4": ("v4", 2), "v5e": ("v5litepod", 1), "v5p": ("v5p", 2), "v6e": ("v6e", 1)}
SINGLE_HOST_MAX = 8  # v5e/v6e slices of up to 8 chips are one host holding them all


@dataclass(frozen=True)
class Cluster:
    """The processes one launch starts: `slices` x `hosts` (per slice), each driving `chips`."""

    target: TargetInfo
    slices: int
    hosts: int  # per slice (TPU) or in all (GPU nodes)
    chips: int  # devices per host

    @property
    def processes(self) -> int:
        """TPU: one process per host; GPU: one per GPU (JAX's SLURM detection binds a task to one)."""
        return self.slices * self.hosts * (self.chips if self.target.kind == "gpu" else 1)


def cluster_of(target: TargetInfo) -> Cluster:
    if target.kind == "gpu":
        hosts = max(1, target.num_devices // GPUS_PER_HOST)
        return Cluster(target, 1, hosts, target.num_devices // hosts)
    per_slice = target.num_devices // target.slices
    if target.generation in ("v5e", "v6e") and per_slice <= SINGLE_HOST_MAX:
        return Cluster(target, target.slices, 1, per_slice)
    chips = min(per_slice, HOST_CHIPS)
    return Cluster(target, target.slices, per_slice // chips, chips)


def check_mesh(mesh: MeshConfig, cluster: Cluster) -> None:
    """The plan's mesh spans the target: its DCN axes are the slices (TPU), and the in-slice
    axes multiply to the devices of one slice (one of them may be -1)."""
    t = cluster.target
    if t.kind == "tpu" and mesh.num_slices != cluster.slices:
        raise UserError(f"the target has {cluster.slices} slice(s) but the plan's mesh.dcn_data x mesh.dcn_fsdp is "
                        f"{mesh.num_slices}; set mesh.dcn_data={cluster.slices} (replicas) or mesh.dcn_fsdp")
    if t.kind == "gpu" and mesh.num_slices not in (1, cluster.hosts):
        raise UserError(f"the plan's mesh.dcn_data x mesh.dcn_fsdp is {mesh.num_slices} but the target has "
                        f"{cluster.hosts} node(s); use 1 (one mesh over all GPUs) or {cluster.hosts}")
    inner = t.num_devices // mesh.num_slices
    sizes = [s for s in (mesh.data, mesh.fsdp, mesh.tensor) if s != -1]
    known = 1
    for s in sizes:
        known *= s
    ok = inner % known == 0 if len(sizes) < 3 else known == inner
    if not ok:
        raise UserError(f"the plan's mesh (data {mesh.data}, fsdp {mesh.fsdp}, tensor {mesh.tensor}) does not "
                        f"split the {inner} devices of each slice/node set; make their product {inner} (or set "
                        "one axis to -1)")


def train_command(plan: str, overrides: list[str]) -> str:
    return shlex.join(["cpt-jax", "train", plan, "distributed.mode=auto", *overrides])


def gke_jobset(cluster: Cluster, plan: str, overrides: list[str], *, name: str, image: str,
               max_restarts: int = 3) -> str:
    t = cluster.target
    if t.kind != "tpu":
        raise UserError("--format gke writes TPU JobSets; for GPU nodes use --format slurm")
    env = [{"name": "JAX_PLATFORMS", "value": "tpu"}]
    if cluster.slices > 1:  # what JAX's multislice runtime reads (XPK sets the same)
        env += [
            {"name": "MEGASCALE_COORDINATOR_ADDRESS", "value": f"{name}-slice-0-0.{name}"},
            {"name": "MEGASCALE_NUM_SLICES", "value": str(cluster.slices)},
            {"name": "MEGASCALE_SLICE_ID", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['jobset.sigs.k8s.io/job-index']"}}},
        ]
    pod = {
        "restartPolicy": "Never",
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "terminationGracePeriodSeconds": 60,  # SIGTERM, then this long to save the agreed step
        "nodeSelector": {"cloud.google.com/gke-tpu-accelerator": GKE_ACCELERATOR[t.generation],
                         "cloud.google.com/gke-tpu-topology": t.topology.split(":", 1)[1]},
        "containers": [{
            "name": "cpt-jax",
            "image": image,
            "command": ["bash", "-c", train_command(plan, overrides)],
            "env": env,
            "ports": [{"containerPort": 8471}, {"containerPort": 8080}],
            "securityContext": {"privileged": True},
            "resources": {"limits": {"google.com/tpu": cluster.chips}},
        }],
    }
    jobset = {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": name, "annotations": {
            "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}},
        "spec": {
            "failurePolicy": {"maxRestarts": max_restarts},  # a restarted JobSet resumes the run
            "replicatedJobs": [{
                "name": "slice",
                "replicas": cluster.slices,
                "template": {"spec": {"parallelism": cluster.hosts, "completions": cluster.hosts,
                                      "backoffLimit": 0, "template": {"spec": pod}}},
            }],
        },
    }
    return (f"# cpt-jax launch: {t.name} x {cluster.slices} slice(s), {cluster.hosts} host(s) per slice, "
            f"{cluster.chips} chips per host\n# kubectl apply -f THIS_FILE\n" + yaml.safe_dump(jobset, sort_keys=False))


def tpu_vm_script(cluster: Cluster, plan: str, overrides: list[str], *, name: str, zone: str) -> str:
    t = cluster.target
    if t.kind != "tpu":
        raise UserError("--format tpu-vm is for Cloud TPU VMs; for GPU nodes use --format slurm")
    prefix, per_chip = TPU_VM_TYPE[t.generation]
    accel = f"{prefix}-{(t.num_devices // cluster.slices) * per_chip}"
    cmd = train_command(plan, overrides)
    lines = [
        "#!/usr/bin/env bash",
        f"# cpt-jax launch: {t.name}, {cluster.slices} slice(s) of {cluster.hosts} host(s) x {cluster.chips} chips",
        "# Create the slice(s) first, e.g.:",
        f"#   gcloud compute tpus queued-resources create {name} --zone={zone} --accelerator-type={accel} \\",
        "#     --runtime-version=<tpu-vm image> "
        + (f"--node-id={name}" if cluster.slices == 1 else f"--node-count={cluster.slices} --node-prefix={name}"),
        "# then run this script from a machine with gcloud. Every worker runs the same command; rerunning",
        "# it resumes the run from its last checkpoint.",
        "set -euo pipefail",
        f"ZONE=${{ZONE:-{zone}}}",
        f"CMD={shlex.quote(cmd)}",
    ]
    nodes = [name] if cluster.slices == 1 else [f"{name}-{i}" for i in range(cluster.slices)]
    for node in nodes:
        lines.append(f'gcloud compute tpus tpu-vm ssh {node} --zone="$ZONE" --worker=all --command="$CMD" &')
    lines += ["wait", ""]
    return "\n".join(lines)


def slurm_script(cluster: Cluster, plan: str, overrides: list[str], *, name: str, time_limit: str,
                 grace_s: int = 120) -> str:
    t = cluster.target
    if t.kind != "gpu":
        raise UserError("--format slurm is for GPU nodes; for TPUs use --format gke or tpu-vm")
    return "\n".join([
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={cluster.hosts}",
        f"#SBATCH --ntasks-per-node={cluster.chips}",  # one task per GPU
        f"#SBATCH --gpus-per-node={cluster.chips}",
        "#SBATCH --exclusive",
        f"#SBATCH --time={time_limit}",
        f"#SBATCH --signal=TERM@{grace_s}",  # SIGTERM this long before the limit: the run saves and stops
        "#SBATCH --requeue",  # a requeued job runs the same command, which resumes the run
        f"# cpt-jax launch: {t.name}, {cluster.hosts} node(s) x {cluster.chips} GPUs, one process per GPU; "
        "sbatch THIS_FILE",
        "set -euo pipefail",
        "export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.75}",
        f"srun --kill-on-bad-exit=1 --ntasks={cluster.processes} --ntasks-per-node={cluster.chips} "
        f"{train_command(plan, overrides)}",
        "",
    ])


def write_kit(fmt: str, target: TargetInfo, mesh: MeshConfig, plan: str, overrides: list[str], *,
              name: str, image: str = "", zone: str = "us-east5-a", time_limit: str = "24:00:00") -> str:
    """The launch file of `fmt` for `plan` on `target`, after checking that the plan's mesh fits it."""
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
    cluster = cluster_of(target)
    check_mesh(mesh, cluster)
    if fmt == "gke":
        if not image:
            raise UserError("--format gke needs --image: a container image with cpt-jax[tpu] installed")
        return gke_jobset(cluster, plan, overrides, name=name, image=image)
    if fmt == "tpu-vm":
        return tpu_vm_script(cluster, plan, overrides, name=name, zone=zone)
    return slurm_script(cluster, plan, overrides, name=name, time_limit=time_limit)
