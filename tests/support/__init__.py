"""Test infrastructure shared by every test directory: where the test servers are, waiting on conditions, scratch
databases, RabbitMQ plumbing, a TCP proxy for outages, Celery clients and subprocesses.

Imported as `support` because tests/ is on sys.path (tests/conftest.py); the test workflow modules (`testflows`,
`dq_flows`, `dq_worker_flows`) stay beside the tests, where worker subprocesses find them through PYTHONPATH.
"""
