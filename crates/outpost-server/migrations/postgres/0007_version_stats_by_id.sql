-- The rollout engine reads each model's new windows by row id on every tick (`id > last`).
-- With only (model, received_ms), PostgreSQL, whose statistics lag behind a table that grows by
-- thousands of rows a minute, walked every entry of the model to find none new (about 70 ms at
-- 600,000 rows); this index makes that read a short range scan whatever the statistics say.
CREATE INDEX version_stats_model_id ON version_stats (model, id);
