"""The project that tests/benchmarks/bench_http.py serves with gunicorn.

One settings module per integration (``benchproject.settings.<name>``), the same
app (``catalog``), the same two endpoints: ``POST /api/items/`` (a DRF create with
token auth) and ``POST /items/`` (a plain Django view, anonymous).
"""
