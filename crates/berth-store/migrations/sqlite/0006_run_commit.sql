-- The commit a run's workspace was made from (worktree and copy modes in a git checkout,
-- `--ref` resolved by the runner), reported by the runner with the run's end. NULL: none.
ALTER TABLE runs ADD COLUMN resolved_commit TEXT;
