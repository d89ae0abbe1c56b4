-- +goose Up
-- One account per customer. balance is in micro-units of currency and may go below zero when a
-- call outlives its reservation (see README). sequence numbers the account's events from 1.
CREATE TABLE billing_accounts (
  id          BINARY(16)  NOT NULL PRIMARY KEY,
  customer_id BINARY(16)  NOT NULL,
  currency    CHAR(3)     NOT NULL,
  balance     BIGINT      NOT NULL,
  sequence    BIGINT      NOT NULL,
  tm_create   DATETIME(6) NOT NULL,
  tm_update   DATETIME(6) NOT NULL,
  UNIQUE KEY uq_billing_accounts_customer (customer_id)
);

-- The ledger: every balance change, newest first by seq. call_id is unique, so a call is charged
-- at most once however often its call.ended arrives; top-ups have no call_id (NULLs never clash).
CREATE TABLE billing_ledger (
  seq              BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  id               BINARY(16)  NOT NULL,
  account_id       BINARY(16)  NOT NULL,
  customer_id      BINARY(16)  NOT NULL,
  kind             VARCHAR(16) NOT NULL,
  call_id          BINARY(16)  NULL,
  amount           BIGINT      NOT NULL,
  balance_after    BIGINT      NOT NULL,
  destination_type VARCHAR(16) NOT NULL DEFAULT '',
  billable_seconds INT         NOT NULL DEFAULT 0,
  rate_per_minute  BIGINT      NOT NULL DEFAULT 0,
  tm_create        DATETIME(6) NOT NULL,
  UNIQUE KEY uq_billing_ledger_id (id),
  UNIQUE KEY uq_billing_ledger_call (call_id),
  KEY idx_billing_ledger_customer (customer_id, seq)
);

-- What the gate holds for each call in progress. A row is active while tm_release is NULL and
-- tm_expire is in the future; released rows stay (as tombstones) so a late gate request for an
-- ended call cannot hold money again, and are purged after a retention period. A release for a
-- call with no reservation writes a tombstone with no account.
CREATE TABLE billing_reservations (
  call_id          BINARY(16)  NOT NULL PRIMARY KEY,
  account_id       BINARY(16)  NULL,
  destination_type VARCHAR(16) NOT NULL DEFAULT '',
  amount           BIGINT      NOT NULL DEFAULT 0,
  rate_per_minute  BIGINT      NOT NULL DEFAULT 0,
  tm_create        DATETIME(6) NOT NULL,
  tm_expire        DATETIME(6) NOT NULL,
  tm_release       DATETIME(6) NULL,
  release_reason   VARCHAR(16) NULL,
  KEY idx_billing_reservations_active (account_id, tm_release, tm_expire),
  KEY idx_billing_reservations_sweep (tm_release, tm_expire)
);

-- +goose Down
DROP TABLE billing_reservations;
DROP TABLE billing_ledger;
DROP TABLE billing_accounts;
