"""Reading runs back: curves as PNG, held-out loss tables as markdown."""

from cpt_jax.report.curves import plot_compare, plot_run
from cpt_jax.report.runs import RunRecord, load_run
from cpt_jax.report.stability import Gap, stability_gaps, stability_table
from cpt_jax.report.tables import data_table, phase_table
from cpt_jax.report.write import Report, write_report

__all__ = ["Report", "RunRecord", "load_run", "plot_run", "plot_compare", "phase_table", "write_report",
           "Gap", "stability_gaps", "stability_table", "data_table"]
