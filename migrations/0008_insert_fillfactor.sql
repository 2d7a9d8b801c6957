-- New rows at the end of the tables, not in the gaps of old pages.
--
-- A page filled by inserts keeps a gap smaller than the row that did not fit; VACUUM records every such gap in
-- the free space map, and an insert then goes to any recorded gap its row fits in. On a table of years of history
-- that is a different old page for almost every new step row, input and process: a page read from outside
-- shared_buffers and, after each checkpoint, a full-page image in the WAL per row, where on a young table
-- consecutive inserts share the last page. With a fillfactor of 90 an insert asks for its row plus 10 % of a page
-- (819 bytes), which such gaps do not have, so new rows are appended; on `processes` the reserve also leaves room
-- for the HOT updates of its step writes. Measured on 1.1 M seeded processes (docs/performance.md, "History at
-- scale"): 90 against 100, alternating, PostgreSQL CPU 2.20 / 1.72 against 2.96 / 2.32 ms per process, full-page
-- images per run 31 k / 23 k against 45 k / 39 k. It costs up to 10 % of the space of pages filled from now on;
-- existing pages are not rewritten.
ALTER TABLE processes SET (fillfactor = 90);
ALTER TABLE process_steps SET (fillfactor = 90);
ALTER TABLE input_states SET (fillfactor = 90);
