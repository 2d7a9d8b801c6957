-- Distributed branches in batches: one message may carry several branches of a fork (`run_branch(process_id,
-- [path, ...])`), which the worker that gets it claims together, each on its own row (design: docs/parallel.md).
-- NULL for a process's dispatch and for a single-branch message (`outbox.branch`, migration 0004).
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS branches varchar[] DEFAULT NULL;
