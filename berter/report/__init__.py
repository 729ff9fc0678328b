"""The comparison report of a sweep: statistics over seeds, tables, figures and their renderings."""
