-- The dashboard's process list reads a page along an index in start order (never a sort of the whole table), so
-- the first page stays fast at millions of rows; ascending pages scan the same index backwards. Its status,
-- workflow and task filters use the single-column indexes of 0001 (PostgreSQL walks this index while a filter
-- matches often, or gathers the few rows that match and sorts them). Every index of `processes` costs each step's
-- UPDATE of its process an entry (the update changes the indexed lease, so it is never HOT): hence only this one
-- (`python -m bench.dashboard_indexes` measures the cost).
CREATE INDEX IF NOT EXISTS dashboard_processes_started ON processes (started_at DESC, pid);

-- Note search: a trigram index over the processes that have a note (partial, so a step's update of a process
-- without one adds nothing to it), where PostgreSQL has the pg_trgm extension (contrib). The embedded server
-- lacks it, and a user without the right to create it is told so; a note search then reads the rows in start
-- order. Ids are searched by prefix (a range of the primary key), workflow names in the workflows table.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_trgm;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pg_trgm not created (%): note searches read the rows', SQLERRM;
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        CREATE INDEX IF NOT EXISTS dashboard_processes_note_trgm ON processes USING gin (note gin_trgm_ops)
            WHERE note IS NOT NULL;
    END IF;
END
$$;
