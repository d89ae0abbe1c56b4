-- +goose Up
-- parent_key_id is the access key that created this one (NULL when a user's JWT did): deleting a
-- key deletes its descendants in the same transaction. The user index serves DeleteUser, which
-- deletes the user's keys with it.
ALTER TABLE customer_accesskeys
  ADD COLUMN parent_key_id BINARY(16) NULL AFTER user_id,
  ADD KEY idx_customer_accesskeys_parent (parent_key_id),
  ADD KEY idx_customer_accesskeys_user (user_id);

-- +goose Down
ALTER TABLE customer_accesskeys
  DROP KEY idx_customer_accesskeys_user,
  DROP KEY idx_customer_accesskeys_parent,
  DROP COLUMN parent_key_id;
