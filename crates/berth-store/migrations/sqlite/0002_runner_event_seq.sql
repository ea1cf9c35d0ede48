-- Runners number their events; a batch whose reply was lost is resent, and the part already
-- stored is skipped by this counter instead of being stored twice.
ALTER TABLE runs ADD COLUMN runner_events_acked BIGINT NOT NULL DEFAULT 0;
