-- Parallel branches in distributed mode: each branch of a fork in flight is claimed, leased and fenced on its own
-- row, so that one process's branches run on several workers at once (design: docs/parallel.md).
-- status: dispatched (a message is on its way) | running (a worker holds the lease) | paused (engine paused) |
-- stopped (the branch finished, failed or waits; or its process was aborted).
CREATE TABLE IF NOT EXISTS process_branches (
    pid               uuid NOT NULL REFERENCES processes (pid) ON DELETE CASCADE,
    path              varchar NOT NULL,
    status            varchar NOT NULL DEFAULT 'dispatched',
    fencing_token     bigint NOT NULL DEFAULT 1,
    lease_owner       varchar,
    lease_expires_at  timestamptz,
    queue             varchar(255) NOT NULL,
    actor             varchar(255) NOT NULL,
    run_by            varchar(255) NOT NULL DEFAULT 'SYSTEM',
    modified_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pid, path)
);
CREATE INDEX IF NOT EXISTS process_branches_open ON process_branches (modified_at) WHERE status <> 'stopped';

-- A branch message carries the branch's path; NULL for a process's own dispatch.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS branch varchar DEFAULT NULL;

-- How many branches of the process's fork in flight are not stopped yet. Every statement that stops a branch (its
-- row `running` -> `stopped`, fenced by its token, so a duplicate stops nothing) decrements it by the branches it
-- stopped, on the process row: two branches stopping at the same instant on two workers are serialised by that row's
-- lock, and the one that brings it to 0 claims the process (compare-and-set) to join the fork.
ALTER TABLE processes ADD COLUMN IF NOT EXISTS open_branches integer NOT NULL DEFAULT 0;
