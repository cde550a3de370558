"""Reporting a stream: a text logger, the report callback (images, tables, files, summary), a progress bar."""

from lightning_cl.loggers.progress import StreamProgressBar, experience_description
from lightning_cl.loggers.report import StreamReport, print_summary, result_to_dict, stream_metrics
from lightning_cl.loggers.text import TextLogger

__all__ = [
    "StreamProgressBar",
    "StreamReport",
    "TextLogger",
    "experience_description",
    "print_summary",
    "result_to_dict",
    "stream_metrics",
]
