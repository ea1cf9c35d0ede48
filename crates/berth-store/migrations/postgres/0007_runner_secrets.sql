-- The names of the secrets a runner declared at registration (JSON list): a submission naming
-- one that no runner able to claim it declares is flagged at submit time.
ALTER TABLE runners ADD COLUMN secrets TEXT NOT NULL DEFAULT '[]';
