-- The collection a request named for its JSON documents (NULL: the schemer chooses). The
-- event carries it too; kept with the job so that work can be driven again from the database
-- alone (a restore from backup: gateway/backup.py).
ALTER TABLE jobs ADD COLUMN collection text;
