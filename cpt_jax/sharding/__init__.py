"""Mesh construction and logical-axis sharding rules."""

from cpt_jax.sharding.mesh import AXES, MeshConfig, make_mesh
from cpt_jax.sharding.rules import DEFAULT_RULES, Sharder, logical_to_spec, param_axes, state_shardings

__all__ = ["AXES", "MeshConfig", "make_mesh", "DEFAULT_RULES", "Sharder", "logical_to_spec",
           "param_axes", "state_shardings"]
