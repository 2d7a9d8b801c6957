-- Parallel branches: the branch a step row belongs to (`Fan out[0]`, nested `Fan out[0]/Each[3]`); NULL for the
-- workflow's own steps, so rows written by orchestrator-core stay valid and its readers see a flat step list.
ALTER TABLE process_steps ADD COLUMN IF NOT EXISTS branch varchar DEFAULT NULL;
