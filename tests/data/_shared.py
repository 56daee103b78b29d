"""What the data tests share: the schema, a made-up conflict, the backend to kill."""

from __future__ import annotations

# How long the row lock of the deadline tests is held at most: far beyond their 0.3 s deadline.
HOLD = 10.0

SCHEMA = """
DROP TABLE IF EXISTS ledger, accounts, payments;
CREATE TABLE ledger (id text PRIMARY KEY, seen int);
CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
INSERT INTO accounts VALUES (1, 0), (2, 0);
CREATE TABLE payments (id text PRIMARY KEY, slow bool NOT NULL);
CREATE OR REPLACE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.slow THEN PERFORM pg_sleep(30); END IF;
  RETURN NEW;
END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON payments
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();
"""

CONFLICT = ("DO $$ BEGIN RAISE EXCEPTION 'made up conflict' "
            "USING ERRCODE = 'serialization_failure'; END $$")

# The backend of this database waiting in COMMIT on the deferred trigger's pg_sleep.
SLEEPING_IN_COMMIT = ("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                      "AND wait_event = 'PgSleep' AND query ILIKE 'COMMIT%'")
