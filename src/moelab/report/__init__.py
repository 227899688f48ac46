"""create-plots: tables, plots and an HTML report for experiment folders.

Each experiment folder is read once (one collect, curves included) into a ReportData; the tables,
the plots and the page are all written from it, to the files moelab.results.tree names:
ExperimentTree.summary (runs, summary and LaTeX tables, markdown, PNG and SVG plots) and
ExperimentTree.report_file (a static page that reads the plots from the summary folder): report.write.

The package itself imports nothing: a training worker draws its running curves with report.figures
without loading pandas and the rest of the report.
"""
