-- The dashboard's process list: one page in the chosen order, optionally narrowed by status, workflow or kind,
-- read from an index in that order (never a sort of the whole table), so the first page stays fast at millions of
-- rows. The order is (column DESC, pid ASC); ascending pages scan the same index backwards.
CREATE INDEX IF NOT EXISTS dashboard_processes_started ON processes (started_at DESC, pid);
CREATE INDEX IF NOT EXISTS dashboard_processes_modified ON processes (last_modified_at DESC, pid);
CREATE INDEX IF NOT EXISTS dashboard_processes_status_started ON processes (last_status, started_at DESC, pid);
CREATE INDEX IF NOT EXISTS dashboard_processes_workflow_started ON processes (workflow_id, started_at DESC, pid);
CREATE INDEX IF NOT EXISTS dashboard_processes_task_started ON processes (is_task, started_at DESC, pid);

-- Text search in notes with a trigram index where PostgreSQL has the pg_trgm extension (contrib; the embedded
-- server lacks it, and the search then reads the rows in list order instead). Ids are searched by prefix, a range
-- of the primary key; workflow names in the small workflows table.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
        CREATE INDEX IF NOT EXISTS dashboard_processes_note_trgm ON processes USING gin (note gin_trgm_ops);
    END IF;
END
$$;
