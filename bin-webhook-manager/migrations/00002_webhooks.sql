-- +goose Up
CREATE TABLE webhook_webhooks (
  id          BINARY(16) NOT NULL PRIMARY KEY,
  customer_id BINARY(16) NOT NULL,
  name        VARCHAR(255) NOT NULL,
  uri         VARCHAR(2048) NOT NULL,
  method      VARCHAR(8) NOT NULL,
  event_types JSON NOT NULL,
  status      VARCHAR(16) NOT NULL,
  -- The HMAC key: it must be recoverable to sign, so it is stored as is and never logged.
  secret      VARBINARY(255) NOT NULL,
  tm_create   DATETIME(6) NOT NULL,
  tm_update   DATETIME(6) NOT NULL,
  tm_delete   DATETIME(6) NULL,
  KEY idx_webhook_webhooks_customer (customer_id, tm_delete, tm_create)
);

-- One event to one webhook. The unique key makes a redelivered event insert nothing twice.
CREATE TABLE webhook_deliveries (
  id              BINARY(16) NOT NULL PRIMARY KEY,
  webhook_id      BINARY(16) NOT NULL,
  customer_id     BINARY(16) NOT NULL,
  event_id        BINARY(16) NOT NULL,
  event_type      VARCHAR(255) NOT NULL,
  resource_id     VARCHAR(255) NOT NULL,
  sequence        BIGINT NOT NULL,
  event_time      DATETIME(6) NOT NULL,
  payload         MEDIUMBLOB NOT NULL,
  status          VARCHAR(16) NOT NULL,
  -- next_attempt is when a pending delivery is due; claim_until leases it to one dispatcher.
  next_attempt    DATETIME(6) NOT NULL,
  claim_until     DATETIME(6) NULL,
  claim_token     BINARY(16) NULL,
  -- Retries run for the retry window from window_start (creation, or a manual retry).
  window_start    DATETIME(6) NOT NULL,
  window_attempts INT NOT NULL DEFAULT 0,
  attempt_count   INT NOT NULL DEFAULT 0,
  tm_create       DATETIME(6) NOT NULL,
  tm_update       DATETIME(6) NOT NULL,
  UNIQUE KEY uq_webhook_deliveries_event (webhook_id, event_id),
  KEY idx_webhook_deliveries_due (status, next_attempt),
  KEY idx_webhook_deliveries_chain (webhook_id, resource_id, status, sequence),
  KEY idx_webhook_deliveries_list (webhook_id, tm_create, id)
);

CREATE TABLE webhook_attempts (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  delivery_id BINARY(16) NOT NULL,
  tm_attempt  DATETIME(6) NOT NULL,
  http_status INT NOT NULL,
  latency_ms  BIGINT NOT NULL,
  error       VARCHAR(1024) NOT NULL,
  response    VARBINARY(1024) NOT NULL,
  KEY idx_webhook_attempts_delivery (delivery_id, id)
);

-- +goose Down
DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
DROP TABLE webhook_webhooks;
