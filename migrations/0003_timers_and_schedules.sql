-- Time: the due times of waiting processes (retry attempts, durable sleeps) and schedules that start workflows.
-- New tables only, so orchestrator-core's tables stay valid; every program's timer loop sleeps until the earliest
-- `due_at` / `next_run_at` (both indexed) and claims what is due by compare-and-set.

CREATE TABLE IF NOT EXISTS process_timers (
    pid       uuid PRIMARY KEY REFERENCES processes (pid) ON DELETE CASCADE,
    due_at    timestamptz NOT NULL,
    -- 'retry' (a step under a retry policy failed) or 'sleep' (a sleep_step): the process is `waiting` until then.
    kind      varchar(20) NOT NULL DEFAULT 'retry',
    attempt   integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ix_process_timers_due_at ON process_timers (due_at);

CREATE TABLE IF NOT EXISTS schedules (
    schedule_id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                     varchar(255) NOT NULL,
    workflow_id              uuid NOT NULL REFERENCES workflows (workflow_id) ON DELETE CASCADE,
    trigger                  varchar(20) NOT NULL,
    trigger_kwargs           jsonb NOT NULL DEFAULT '{}'::jsonb,
    user_inputs              jsonb NOT NULL DEFAULT '[{}]'::jsonb,
    no_uncompleted_instance  boolean NOT NULL DEFAULT false,
    -- 'api' (REST, CLI) or 'code' (declared with the workflow, upserted at start-up under a unique name).
    source                   varchar(20) NOT NULL DEFAULT 'api',
    next_run_at              timestamptz,
    last_run_at              timestamptz,
    last_pid                 uuid,
    created_at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ix_schedules_next_run_at ON schedules (next_run_at) WHERE next_run_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS ux_schedules_code_name ON schedules (name) WHERE source = 'code';

-- Which schedule started a process (a process row may be written by orchestrator-core, which has no such column).
CREATE TABLE IF NOT EXISTS schedule_runs (
    pid            uuid PRIMARY KEY,
    schedule_id    uuid NOT NULL,
    schedule_name  varchar(255) NOT NULL,
    tick_at        timestamptz NOT NULL
);
