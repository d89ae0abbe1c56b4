-- +goose Up
-- quota is the talk time the call's rtc node lets it have, in seconds from the answer (granted by
-- billing, enforced by the node); tm_renew is when the next slice is asked for (NULL: never, or
-- no more: the call ended or has no quota). hangup_reason grows for balance_exhausted.
ALTER TABLE call_calls
  MODIFY hangup_reason VARCHAR(32) NOT NULL DEFAULT '',
  ADD COLUMN quota INT UNSIGNED NOT NULL DEFAULT 0 AFTER dial_timeout,
  ADD COLUMN tm_renew DATETIME(6) NULL AFTER tm_check,
  ADD KEY idx_call_calls_renew (tm_renew);

-- +goose Down
ALTER TABLE call_calls DROP KEY idx_call_calls_renew, DROP COLUMN tm_renew, DROP COLUMN quota,
  MODIFY hangup_reason VARCHAR(16) NOT NULL DEFAULT '';
