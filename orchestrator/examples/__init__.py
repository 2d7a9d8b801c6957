"""Example workflows, shipped so that `orchestrator run` has something to run."""
