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

-- Stop the branches (pids[i], paths[i]) held with tokens[i]; the processes whose fork has no open branch left and
-- which no runner holds are claimed for `owner` (token bumped) and returned with their new token: the join (or
-- the settle) of each fork is decided here once. The process rows are locked first, in pid order, so two workers
-- stopping the last two branches of one fork at the same instant are serialised, and the second sees the first.
CREATE OR REPLACE FUNCTION stop_branches(pids uuid[], paths varchar[], tokens bigint[], owner varchar, ttl float8)
RETURNS TABLE (pid uuid, fencing_token bigint) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM 1 FROM processes p WHERE p.pid = ANY(pids) ORDER BY p.pid FOR UPDATE;
    UPDATE process_branches b
       SET status = 'stopped', lease_owner = NULL, lease_expires_at = NULL, modified_at = now()
      FROM unnest(pids, paths, tokens) AS i(pid, path, token)
     WHERE b.pid = i.pid AND b.path = i.path AND b.fencing_token = i.token AND b.status = 'running';
    RETURN QUERY
    UPDATE processes p
       SET lease_owner = owner, lease_expires_at = now() + make_interval(secs => ttl),
           fencing_token = p.fencing_token + 1, last_modified_at = now()
     WHERE p.pid = ANY(pids) AND p.last_status = 'running' AND p.lease_owner IS NULL
       AND NOT EXISTS (SELECT 1 FROM process_branches o WHERE o.pid = p.pid AND o.status <> 'stopped')
    RETURNING p.pid, p.fencing_token;
END
$$;
