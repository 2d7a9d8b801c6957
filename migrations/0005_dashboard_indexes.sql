-- The dashboard's process list reads a page along `ix_processes_started_at` (started_at DESC, pid), which 0006
-- creates for the REST listing too, in start order (never a sort of the whole table); its filters use the
-- status and workflow indexes. No index here touches a column a step's write changes, so step writes stay HOT.

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
