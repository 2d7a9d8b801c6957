-- History at scale: what a database with millions of processes needs so that listings, /metrics, the sweeper
-- and retention cost the same as on an empty one.

-- The default listing order (newest first, pid as tie-breaker): the first page is an index scan, not a sort.
CREATE INDEX IF NOT EXISTS ix_processes_started_at ON processes (started_at DESC, pid);

-- Status with kind: status counts and "tasks in these statuses" read it alone. It replaces the boolean is_task
-- index (no selectivity) and the status-only one, so a step write maintains as many indexes as before.
CREATE INDEX IF NOT EXISTS ix_processes_status_kind ON processes (last_status, is_task);
DROP INDEX IF EXISTS ix_processes_is_task;
DROP INDEX IF EXISTS ix_processes_last_status;

-- Retention's scan: completed processes by start (last_modified_at changes on every step write, and an index
-- on it would make every step write a non-HOT update; started_at never changes, and a process last changed
-- before a cut-off started before it). Partial: it costs nothing to the writes of processes in other statuses.
-- The sweeper's scans (created/resumed, waiting, running) find their few rows through the status index.
CREATE INDEX IF NOT EXISTS ix_processes_completed ON processes (started_at) WHERE last_status = 'completed';
CREATE INDEX IF NOT EXISTS ix_process_steps_branch ON process_steps (pid, branch) WHERE branch IS NOT NULL;

-- The step-duration histogram of /metrics, kept up to date by the step writer's statement instead of scanned
-- from process_steps on every scrape. `bucket` is the number of histogram bounds the duration fits under;
-- `shard` spreads concurrent writers over rows, so that they do not wait on each other's row lock.
CREATE TABLE IF NOT EXISTS step_duration_counts (
    shard    integer NOT NULL,
    bucket   integer NOT NULL,
    n        bigint NOT NULL DEFAULT 0,
    seconds  float8 NOT NULL DEFAULT 0,
    PRIMARY KEY (shard, bucket)
);
INSERT INTO step_duration_counts (shard, bucket, n, seconds)
SELECT 0, width_bucket(-secs, '{-1800,-300,-60,-30,-10,-5,-2.5,-1,-0.5,-0.25,-0.1,-0.05,-0.025,-0.01,-0.005}'::float8[]),
       count(*), coalesce(sum(greatest(secs, 0)), 0)
  FROM (SELECT extract(epoch FROM completed_at - started_at)::float8 AS secs FROM process_steps) d
 GROUP BY 2
    ON CONFLICT (shard, bucket) DO NOTHING;

-- Processes by status and kind, for /metrics and the status counts: kept by triggers, so that every writer (ours,
-- an orchestrator-core API on a shared database, an operator's SQL) keeps them exact, and a read sums a few rows
-- instead of counting millions. The update trigger fires only when the status (or kind) changes. Each database
-- session adds to rows of its own (`backend`: its pid), so concurrent transactions never wait on each other here;
-- the sweeper folds the rows of sessions that have ended into backend 0.
CREATE TABLE IF NOT EXISTS process_status_counts (
    backend      integer NOT NULL,
    last_status  varchar(50) NOT NULL,
    is_task      boolean NOT NULL,
    n            bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (backend, last_status, is_task)
);

CREATE OR REPLACE FUNCTION count_process_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO process_status_counts AS c (backend, last_status, is_task, n)
        VALUES (pg_backend_pid(), OLD.last_status, OLD.is_task, -1)
        ON CONFLICT (backend, last_status, is_task) DO UPDATE SET n = c.n - 1;
    END IF;
    INSERT INTO process_status_counts AS c (backend, last_status, is_task, n)
    VALUES (pg_backend_pid(), NEW.last_status, NEW.is_task, 1)
    ON CONFLICT (backend, last_status, is_task) DO UPDATE SET n = c.n + 1;
    RETURN NULL;
END $$;

-- Deletes come in batches (retention deletes 1,000 per statement): counted once per statement, grouped, rather
-- than once per row (each row's update of the same counter row would lengthen its version chain).
CREATE OR REPLACE FUNCTION count_deleted_processes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO process_status_counts AS c (backend, last_status, is_task, n)
    SELECT pg_backend_pid(), last_status, is_task, -count(*) FROM deleted_rows GROUP BY 2, 3 ORDER BY 2, 3
    ON CONFLICT (backend, last_status, is_task) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS processes_count_insert ON processes;
DROP TRIGGER IF EXISTS processes_count_update ON processes;
DROP TRIGGER IF EXISTS processes_count_delete ON processes;
CREATE TRIGGER processes_count_insert AFTER INSERT ON processes
    FOR EACH ROW EXECUTE FUNCTION count_process_status();
CREATE TRIGGER processes_count_update AFTER UPDATE OF last_status, is_task ON processes
    FOR EACH ROW WHEN (OLD.last_status IS DISTINCT FROM NEW.last_status OR OLD.is_task IS DISTINCT FROM NEW.is_task)
    EXECUTE FUNCTION count_process_status();
CREATE TRIGGER processes_count_delete AFTER DELETE ON processes REFERENCING OLD TABLE AS deleted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION count_deleted_processes();

-- The triggers' lock on `processes` holds concurrent writers until this commits: the count starts exact.
DELETE FROM process_status_counts;
INSERT INTO process_status_counts (backend, last_status, is_task, n)
SELECT 0, last_status, is_task, count(*) FROM processes GROUP BY 2, 3;
