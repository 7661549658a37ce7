"""Training: the run config, the jitted step, the phase loop and what it needs."""
