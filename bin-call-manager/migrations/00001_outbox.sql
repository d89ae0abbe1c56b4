-- +goose Up
CREATE TABLE call_outbox (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  event_id    BINARY(16) NOT NULL,
  exchange    VARCHAR(255) NOT NULL,
  routing_key VARCHAR(255) NOT NULL,
  payload     MEDIUMBLOB NOT NULL,
  tm_create   DATETIME(6) NOT NULL,
  tm_sent     DATETIME(6) NULL,
  UNIQUE KEY uq_call_outbox_event (event_id),
  KEY idx_call_outbox_pending (tm_sent, id)
);

-- +goose Down
DROP TABLE call_outbox;
