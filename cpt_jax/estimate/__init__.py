"""Pre-launch planning: per-device memory, FLOPs and step time of a plan on N devices."""

from cpt_jax.estimate.devices import DEVICE_KINDS, device_kind
from cpt_jax.estimate.plan import estimate_plan
from cpt_jax.estimate.text import format_estimate

__all__ = ["DEVICE_KINDS", "device_kind", "estimate_plan", "format_estimate"]
