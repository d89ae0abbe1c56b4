-- +goose Up
-- tm_alive is the last time the reaper's probe found the call's dialog live on its rtc node: a
-- call the reaper has to end ended no later than the last moment it was known alive.
ALTER TABLE call_calls ADD COLUMN tm_alive DATETIME(6) NULL AFTER tm_hangup;

-- +goose Down
ALTER TABLE call_calls DROP COLUMN tm_alive;
