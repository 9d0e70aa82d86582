"""Reports of training runs: ``report.html`` with curves, an embedding map and a retrieval grid.

:func:`write_report` is ``contrastkit report RUN``; :mod:`contrastkit.reporting.run` reads run folders
(metrics, history, config, the trained model) for the report, ``contrastkit embed`` and ``contrastkit export``.
"""

from contrastkit.reporting.report import REPORT_NAME, ReportResult, write_report
from contrastkit.reporting.run import TrainedRun, backbone_features, load_trained_run

__all__ = [
    "REPORT_NAME",
    "ReportResult",
    "TrainedRun",
    "backbone_features",
    "load_trained_run",
    "write_report",
]
