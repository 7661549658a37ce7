"""Training: loss, state, the jitted step and the phase loop."""
