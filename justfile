# Developer tasks. `just --list` shows them.

venv := ".venv"

# Create the virtualenv and install the project with its dev tools.
setup:
    python3 -m venv {{venv}}
    {{venv}}/bin/pip install -q -e '.[dev]'

# Run the example workflow end to end on the embedded PostgreSQL (no DATABASE_URI needed).
run *args: setup
    {{venv}}/bin/orchestrator run {{args}}

# Serve the HTTP API with the example workflows.
serve *args: setup
    {{venv}}/bin/orchestrator serve --workflows orchestrator.examples.workflows {{args}}

# The test suite (real PostgreSQL and RabbitMQ on 127.0.0.1).
test *args: setup
    {{venv}}/bin/python -m pytest {{args}}

# ruff, strict mypy and the import contracts (the layers).
lint: setup
    {{venv}}/bin/ruff check .
    {{venv}}/bin/ruff format --check .
    {{venv}}/bin/mypy
    {{venv}}/bin/lint-imports

# Benchmarks (a dev tool, not in the wheel): see `just bench --help`.
bench *args: setup
    {{venv}}/bin/python -m bench {{args}}

# This project and orchestrator-core 5.5 side by side in one run (ratios): see `just bench-reference --help`.
bench-reference *args: setup
    {{venv}}/bin/python -m bench.reference {{args}}
