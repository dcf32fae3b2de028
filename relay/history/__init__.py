"""History: finished deliveries, their attempts and events, in PostgreSQL.

Redis holds what is in flight; this package holds what is done. The delivery engine never
imports it: the worker's history writer moves finished records here, and the API reads them
through `HistoryReader`.
"""
