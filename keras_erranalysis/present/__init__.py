"""Present: figures, attention heatmaps, TensorBoard summaries and the HTML report.

Reads what :mod:`keras_erranalysis.analysis` computed and :mod:`keras_erranalysis.run`
stored; never runs the model. User text is drawn and written as text: plain in figures,
escaped in markdown and HTML.
"""

from keras_erranalysis.present._attention_plots import plot_attention, plot_attention_overview
from keras_erranalysis.present._figures import (
    figure_png,
    plot_class_frequency,
    plot_confusion_matrix,
    plot_data_map,
    plot_error_rate_by_bins,
    plot_loss_trajectories,
    plot_margin_histogram,
)
from keras_erranalysis.present._heatmaps import (
    axis_tokens,
    example_heatmaps,
    plot_teacher_forced_and_generated,
)
from keras_erranalysis.present._report import compare_runs, render_report, write_report

__all__ = [
    "axis_tokens",
    "compare_runs",
    "example_heatmaps",
    "figure_png",
    "plot_attention",
    "plot_attention_overview",
    "plot_class_frequency",
    "plot_confusion_matrix",
    "plot_data_map",
    "plot_error_rate_by_bins",
    "plot_loss_trajectories",
    "plot_margin_histogram",
    "plot_teacher_forced_and_generated",
    "render_report",
    "write_report",
]
