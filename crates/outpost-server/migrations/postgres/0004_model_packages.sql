-- Model versions published with their package: the bytes live in the artifact store under
-- their sha256; the registry keeps the hash, the size and the task read from the manifest.
-- Versions published as metadata only keep NULLs here.
ALTER TABLE models ADD COLUMN package_sha256 TEXT;
ALTER TABLE models ADD COLUMN package_size BIGINT;
ALTER TABLE models ADD COLUMN task TEXT;
