-- A project's egress ceiling: JSON list of allow rules no run of the project may go beyond.
-- NULL: no ceiling.
ALTER TABLE projects ADD COLUMN egress_ceiling TEXT;
