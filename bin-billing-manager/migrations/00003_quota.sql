-- +goose Up
-- granted is the quota of the call in seconds of talk from its answer: the first slice at the
-- gate, one more slice per extension. amount is the price of granted; the charge never exceeds it.
ALTER TABLE billing_reservations ADD COLUMN granted INT NOT NULL DEFAULT 0 AFTER amount;

-- +goose Down
ALTER TABLE billing_reservations DROP COLUMN granted;
