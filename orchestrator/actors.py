"""The module path Dramatiq's command line loads: `dramatiq orchestrator.actors -Q workflows` (or `-Q tasks`).

The worker layer lives in `orchestrator.worker`; importing this module configures the broker and declares the
actors (`orchestrator.worker.actors`), which is all `dramatiq` needs from it.
"""

from orchestrator.worker.actors import new_task, new_workflow, resume_task, resume_workflow, run_branch

__all__ = ["new_task", "new_workflow", "resume_task", "resume_workflow", "run_branch"]
