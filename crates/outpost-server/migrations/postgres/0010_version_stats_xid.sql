-- The transaction that wrote each window. Identity values are taken at insert and transactions
-- commit in any order, so a read of `id > last` skipped for good a report batch that committed
-- after one with higher ids; the rollout engine now also reads the rows of transactions that
-- were still open at its previous read (see `db/stats_cursor.rs`).
ALTER TABLE version_stats ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX version_stats_model_xid ON version_stats (model, xid);
