-- A runner's name belongs to the runner token that registered it: another token may neither
-- register under that name nor claim or heartbeat as it. Runners registered before this
-- migration have no token yet; the first token to register (or claim) as them takes the name.
ALTER TABLE runners ADD COLUMN token_id TEXT;
