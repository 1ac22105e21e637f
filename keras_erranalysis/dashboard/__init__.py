"""Dashboard: the TensorBoard "Error Analysis" tab's server side.

:class:`Dashboard` answers the tab's requests (filter, sort and page examples, histograms,
per-class metrics, the data map and embedding projection, one example in full, slices, two
runs compared) over run folders read memory-mapped; it imports no TensorBoard. The plugin
itself, ``keras_erranalysis.dashboard._plugin.ErrorAnalysisPlugin``, is registered through
the ``tensorboard_plugins`` entry point, so installing the package adds the tab; the command
``keras-erranalysis serve RUN`` starts TensorBoard on a run folder.
"""

from keras_erranalysis.dashboard._catalog import find_runs
from keras_erranalysis.dashboard._queries import Dashboard
from keras_erranalysis.dashboard._store import QueryError

__all__ = ["Dashboard", "QueryError", "find_runs"]
