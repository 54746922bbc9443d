-- Nothing to do: SQLite writers take turns, so version_stats ids commit in order (PostgreSQL's
-- 0010 records each row's transaction for the rollout engine's reads). Kept so both engines
-- number their migrations alike.
SELECT 1;
