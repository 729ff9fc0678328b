"""The comparison report of a sweep: tables, figures and their renderings."""
