"""Benchmarks: latency, size, MACs and retrieval quality of checkpoints and exported models, and a report.

* ``python -m benchmarks.latency MODEL...`` -- per runtime x threads latency, memory, size, params, MACs and
  the ratio to a measured compute floor of this CPU (``benchmarks.latency``).
* ``python -m benchmarks.recall MODEL... --data DATA`` -- Recall@K / MAP@R / R-Precision, symmetric and
  asymmetric (``benchmarks.recall``).
* ``python -m benchmarks.report RESULTS... --out DIR`` -- Markdown tables and PNG plots (``benchmarks.report``).

Every result JSON carries ``machine`` (``benchmarks.machine.describe``) so runs from different machines
never mix silently.
"""

RESULT_FORMAT = "mobilekd-bench/1"
