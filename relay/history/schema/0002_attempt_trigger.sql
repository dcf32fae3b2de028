-- What made each attempt: the retry schedule, or an operator's retry of a pending delivery
-- (`manual`: outside the schedule). Attempts written before were all scheduled. A constant
-- default is kept in the catalog: adding the column rewrites no partition.
ALTER TABLE attempts ADD COLUMN trigger text NOT NULL DEFAULT 'scheduled';
