-- +goose Up
CREATE TABLE customer_customers (
  id        BINARY(16) NOT NULL PRIMARY KEY,
  name      VARCHAR(255) NOT NULL,
  email     VARCHAR(255) NOT NULL DEFAULT '',
  tm_create DATETIME(6) NOT NULL,
  tm_update DATETIME(6) NOT NULL,
  tm_delete DATETIME(6) NULL,
  KEY idx_customer_customers_create (tm_create, id)
);

-- customer_id is NULL for a superadmin, who belongs to no customer.
CREATE TABLE customer_users (
  id            BINARY(16) NOT NULL PRIMARY KEY,
  customer_id   BINARY(16) NULL,
  username      VARCHAR(64) NOT NULL,
  password_hash VARCHAR(255) NOT NULL,
  permission    INT UNSIGNED NOT NULL,
  tm_create     DATETIME(6) NOT NULL,
  tm_update     DATETIME(6) NOT NULL,
  tm_delete     DATETIME(6) NULL,
  UNIQUE KEY uq_customer_users_username (username),
  KEY idx_customer_users_customer (customer_id)
);

-- token_hash is SHA-256 of the key; the key itself is never stored. permission is the creator's
-- at creation time.
CREATE TABLE customer_accesskeys (
  id          BINARY(16) NOT NULL PRIMARY KEY,
  customer_id BINARY(16) NULL,
  user_id     BINARY(16) NOT NULL,
  name        VARCHAR(255) NOT NULL,
  token_hash  BINARY(32) NOT NULL,
  permission  INT UNSIGNED NOT NULL,
  tm_expire   DATETIME(6) NOT NULL,
  tm_create   DATETIME(6) NOT NULL,
  tm_delete   DATETIME(6) NULL,
  UNIQUE KEY uq_customer_accesskeys_token (token_hash),
  KEY idx_customer_accesskeys_customer (customer_id, tm_create)
);

-- +goose Down
DROP TABLE customer_accesskeys;
DROP TABLE customer_users;
DROP TABLE customer_customers;
