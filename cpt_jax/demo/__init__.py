"""The embedded CPT demo: stdlib corpora, a two-phase story with and without replay, its report."""
