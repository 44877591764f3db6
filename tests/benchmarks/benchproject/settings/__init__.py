"""One module per integration; each starts from :mod:`.base`.

``BENCH_DATABASE_URL`` chooses the database (the runner gives each variant its own
PostgreSQL database); without it, a SQLite file under the system's temporary folder.
"""
