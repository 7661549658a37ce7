"""Launch kits for real clusters (GKE JobSets, Cloud TPU VMs, SLURM), written from a plan."""

from cpt_jax.launch.kits import FORMATS, cluster_of, write_kit

__all__ = ["FORMATS", "cluster_of", "write_kit"]
