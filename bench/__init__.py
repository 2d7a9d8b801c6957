"""End-to-end benchmarks against real servers, driven from outside as a user would: `python -m bench --help`
(`just bench`). A development tool run from a checkout: it is not in the wheel and needs the dev extras (httpx,
psutil).

Why end to end: the figure a user meets includes the HTTP layer, the PostgreSQL round trips, the broker and the
logging, so every scenario starts the real programs as subprocesses (`orchestrator serve`, `dramatiq
orchestrator.actors`, `orchestrator celery-shim`), drives them over HTTP (or with a real Celery client), and
observes completion where a user would: `processes.last_status` in PostgreSQL. Each scenario gets fresh servers,
so its CPU, memory and transaction counts are its own.

Transactions per process come from `pg_stat_database` of the bench database. PostgreSQL flushes a backend's
counters at most once a second (and the rest ten seconds after it goes idle), so they are read only once every
backend of the run has exited; the bench's own statements and the servers' fixed start/stop cost (measured once
per server layout) are subtracted.
"""
