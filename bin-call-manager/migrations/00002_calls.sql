-- +goose Up
-- One row per call (DESIGN §6, §9). The public fields are columns; node_id, sip_call_id,
-- sequence, version, probe_failures, tm_deadline and tm_check are the call manager's own.
CREATE TABLE call_calls (
  id             BINARY(16) NOT NULL PRIMARY KEY,
  customer_id    BINARY(16) NOT NULL,
  source         JSON NOT NULL,
  destination    JSON NOT NULL,
  status         VARCHAR(16) NOT NULL,
  direction      VARCHAR(16) NOT NULL,
  hangup_by      VARCHAR(16) NOT NULL DEFAULT '',
  hangup_reason  VARCHAR(16) NOT NULL DEFAULT '',
  hangup_cause   SMALLINT UNSIGNED NOT NULL DEFAULT 0,
  sip_code       SMALLINT UNSIGNED NOT NULL DEFAULT 0,
  duration       INT UNSIGNED NOT NULL DEFAULT 0,
  metadata       JSON NULL,
  node_id        VARCHAR(255) NOT NULL DEFAULT '',
  sip_call_id    VARCHAR(255) NOT NULL DEFAULT '',
  dial_timeout   INT UNSIGNED NOT NULL,
  -- sequence of the call's last event (call.created is 1); version counts every write.
  sequence       BIGINT UNSIGNED NOT NULL,
  version        BIGINT UNSIGNED NOT NULL,
  probe_failures INT UNSIGNED NOT NULL DEFAULT 0,
  tm_create      DATETIME(6) NOT NULL,
  tm_update      DATETIME(6) NOT NULL,
  tm_ringing     DATETIME(6) NULL,
  tm_progressing DATETIME(6) NULL,
  tm_hangup      DATETIME(6) NULL,
  -- the reaper ends the call at tm_deadline if rtc has not, and looks at it next at tm_check
  -- (NULL once the call has ended).
  tm_deadline    DATETIME(6) NOT NULL,
  tm_check       DATETIME(6) NULL,
  tm_delete      DATETIME(6) NULL,
  KEY idx_call_calls_customer (customer_id, tm_create, id),
  KEY idx_call_calls_create (tm_create, id),
  KEY idx_call_calls_check (tm_check)
);

-- +goose Down
DROP TABLE call_calls;
