-- +goose Up
-- One row per create request that carried an idempotency key (POST /v1/calls). The primary key
-- makes the key unique per customer for the request as a whole (one request can create several
-- calls). The row is claimed (state pending) before the billing gate, with the ids its calls will
-- have, so a retry that takes over a dead attempt gates the same ids (billing reserves once per
-- call id) and nothing leaks; it turns created in the transaction that inserts the calls and their
-- call.created events. attempt fences the owner: only the attempt named here may commit calls or
-- give the key up, and another may take over only once tm_lease has passed.
CREATE TABLE call_requests (
  customer_id     BINARY(16) NOT NULL,
  -- SHA-256 of the idempotency key (as sent; it may be up to 512 bytes)
  key_hash        BINARY(32) NOT NULL,
  idempotency_key VARCHAR(512) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  -- SHA-256 of the canonical request body without the key: "same request" means same hash
  request_hash    BINARY(32) NOT NULL,
  call_ids        JSON NOT NULL,
  state           VARCHAR(16) NOT NULL,
  attempt         BINARY(16) NOT NULL,
  tm_lease        DATETIME(6) NOT NULL,
  tm_create       DATETIME(6) NOT NULL,
  tm_update       DATETIME(6) NOT NULL,
  PRIMARY KEY (customer_id, key_hash),
  KEY idx_call_requests_create (tm_create)
);

-- +goose Down
DROP TABLE call_requests;
