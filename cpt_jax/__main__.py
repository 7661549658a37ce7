from cpt_jax.cli.main import entry

entry()
