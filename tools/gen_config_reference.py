"""Regenerate configs/REFERENCE.md from the config dataclasses."""

from pathlib import Path

from cpt_jax.cli.reference import run_config_reference

if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "configs" / "REFERENCE.md"
    out.write_text(run_config_reference())
    print(f"wrote {out}")
