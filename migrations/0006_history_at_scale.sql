-- History at scale: what a database with millions of processes needs so that listings, /metrics, the sweeper
-- and retention cost the same as on an empty one.

-- The default listing order (newest first, pid as tie-breaker): the first page is an index scan, not a sort.
CREATE INDEX IF NOT EXISTS ix_processes_started_at ON processes (started_at DESC, pid);

-- Status with kind: status counts and "tasks in these statuses" read it alone. It replaces the boolean is_task
-- index (no selectivity) and the status-only one, so a step write maintains as many indexes as before.
CREATE INDEX IF NOT EXISTS ix_processes_status_kind ON processes (last_status, is_task);
DROP INDEX IF EXISTS ix_processes_is_task;
DROP INDEX IF EXISTS ix_processes_last_status;

-- The sweeper's and the retention's scans: partial, so that they hold only the few rows they look for and cost
-- nothing to the writes of processes in other statuses.
CREATE INDEX IF NOT EXISTS ix_processes_undispatched ON processes (last_modified_at)
    WHERE last_status IN ('created', 'resumed');
CREATE INDEX IF NOT EXISTS ix_processes_waiting ON processes (last_modified_at) WHERE last_status = 'waiting';
CREATE INDEX IF NOT EXISTS ix_processes_completed ON processes (last_modified_at) WHERE last_status = 'completed';
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
