// Package mysql keeps the webhook manager's state in MySQL: webhooks (webhook_webhooks), their
// deliveries (webhook_deliveries, one per webhook and event) and every attempt (webhook_attempts).
// It translates driver errors into the webhook domain's sentinels.
package mysql

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-webhook-manager/internal/webhook"
)

// WebhookStore keeps webhooks.
type WebhookStore struct{ db *sql.DB }

// NewWebhookStore is the store on db.
func NewWebhookStore(db *sql.DB) *WebhookStore { return &WebhookStore{db: db} }

// uid parses a UUID into its 16 bytes; ok is false for anything else.
func uid(s string) ([]byte, bool) {
	u, err := uuid.Parse(s)
	if err != nil {
		return nil, false
	}
	return u[:], true
}

func uidString(b []byte) string {
	u, err := uuid.FromBytes(b)
	if err != nil {
		return ""
	}
	return u.String()
}

const webhookColumns = "id, customer_id, name, uri, method, event_types, status, secret, tm_create, tm_update"

type scanner interface{ Scan(dest ...any) error }

func scanWebhook(s scanner, extra ...any) (webhook.Webhook, error) {
	var w webhook.Webhook
	var id, customer, types, secret []byte
	if err := s.Scan(append([]any{&id, &customer, &w.Name, &w.URI, &w.Method, &types, &w.Status, &secret, &w.TMCreate, &w.TMUpdate}, extra...)...); err != nil {
		return webhook.Webhook{}, err
	}
	w.ID, w.CustomerID, w.Secret = uidString(id), uidString(customer), webhook.Secret(secret)
	if err := json.Unmarshal(types, &w.EventTypes); err != nil {
		return webhook.Webhook{}, fmt.Errorf("webhook %s: event_types: %w", w.ID, err)
	}
	return w, nil
}

// Create inserts w.
func (s *WebhookStore) Create(ctx context.Context, w webhook.Webhook) error {
	id, ok := uid(w.ID)
	if !ok {
		return fmt.Errorf("webhook id %q is not a UUID", w.ID)
	}
	customer, ok := uid(w.CustomerID)
	if !ok {
		return &webhook.FieldError{Field: "customer_id", Description: "must be a UUID"}
	}
	types, err := json.Marshal(w.EventTypes)
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, "INSERT INTO webhook_webhooks ("+webhookColumns+") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
		id, customer, w.Name, w.URI, w.Method, types, w.Status, []byte(w.Secret.Reveal()), w.TMCreate, w.TMUpdate)
	if err != nil {
		return fmt.Errorf("insert webhook: %w", err)
	}
	return nil
}

// scope is the WHERE clause and arguments that select webhook id of customerID ("" for any).
func scope(customerID, id string) (string, []any, bool) {
	bid, ok := uid(id)
	if !ok {
		return "", nil, false
	}
	if customerID == "" {
		return " WHERE id = ? AND tm_delete IS NULL", []any{bid}, true
	}
	cid, ok := uid(customerID)
	if !ok {
		return "", nil, false
	}
	return " WHERE id = ? AND customer_id = ? AND tm_delete IS NULL", []any{bid, cid}, true
}

// Get reads a webhook of customerID ("" for any).
func (s *WebhookStore) Get(ctx context.Context, customerID, id string) (webhook.Webhook, error) {
	where, args, ok := scope(customerID, id)
	if !ok {
		return webhook.Webhook{}, webhook.ErrNotFound
	}
	w, err := scanWebhook(s.db.QueryRowContext(ctx, "SELECT "+webhookColumns+" FROM webhook_webhooks"+where, args...))
	if errors.Is(err, sql.ErrNoRows) {
		return webhook.Webhook{}, webhook.ErrNotFound
	}
	if err != nil {
		return webhook.Webhook{}, fmt.Errorf("read webhook: %w", err)
	}
	return w, nil
}

// ListLimit bounds List.
const ListLimit = 1000

// List lists the webhooks of customerID ("" for every customer), newest first.
func (s *WebhookStore) List(ctx context.Context, customerID string) ([]webhook.Webhook, error) {
	q := "SELECT " + webhookColumns + " FROM webhook_webhooks WHERE tm_delete IS NULL"
	var args []any
	if customerID != "" {
		cid, ok := uid(customerID)
		if !ok {
			return []webhook.Webhook{}, nil
		}
		q += " AND customer_id = ?"
		args = append(args, cid)
	}
	q += " ORDER BY tm_create DESC, id DESC LIMIT ?"
	return s.query(ctx, q, append(args, ListLimit)...)
}

// EnabledWebhooks lists the enabled webhooks of a customer; none for an id that is not a UUID.
func (s *WebhookStore) EnabledWebhooks(ctx context.Context, customerID string) ([]webhook.Webhook, error) {
	cid, ok := uid(customerID)
	if !ok {
		return nil, nil
	}
	return s.query(ctx, "SELECT "+webhookColumns+" FROM webhook_webhooks WHERE customer_id = ? AND status = ? AND tm_delete IS NULL",
		cid, webhook.StatusEnabled)
}

func (s *WebhookStore) query(ctx context.Context, q string, args ...any) ([]webhook.Webhook, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list webhooks: %w", err)
	}
	defer rows.Close()
	out := []webhook.Webhook{}
	for rows.Next() {
		w, err := scanWebhook(rows)
		if err != nil {
			return nil, fmt.Errorf("list webhooks: %w", err)
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list webhooks: %w", err)
	}
	return out, nil
}

// Update runs fn on the webhook under a row lock and saves its name, URI, method, event types,
// status, secret and tm_update.
func (s *WebhookStore) Update(ctx context.Context, customerID, id string, fn func(*webhook.Webhook) error) (webhook.Webhook, error) {
	where, args, ok := scope(customerID, id)
	if !ok {
		return webhook.Webhook{}, webhook.ErrNotFound
	}
	var out webhook.Webhook
	err := inTx(ctx, s.db, func(tx *sql.Tx) error {
		w, err := scanWebhook(tx.QueryRowContext(ctx, "SELECT "+webhookColumns+" FROM webhook_webhooks"+where+" FOR UPDATE", args...))
		if errors.Is(err, sql.ErrNoRows) {
			return webhook.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("read webhook: %w", err)
		}
		was := w.Status
		if err := fn(&w); err != nil {
			return err
		}
		types, err := json.Marshal(w.EventTypes)
		if err != nil {
			return err
		}
		bid, _ := uid(w.ID)
		if _, err := tx.ExecContext(ctx, "UPDATE webhook_webhooks SET name = ?, uri = ?, method = ?, event_types = ?, status = ?, secret = ?, tm_update = ? WHERE id = ?",
			w.Name, w.URI, w.Method, types, w.Status, []byte(w.Secret.Reveal()), w.TMUpdate, bid); err != nil {
			return fmt.Errorf("update webhook: %w", err)
		}
		switch {
		case was == webhook.StatusEnabled && w.Status == webhook.StatusDisabled:
			err = pauseDeliveries(ctx, tx, bid, w.TMUpdate)
		case was == webhook.StatusDisabled && w.Status == webhook.StatusEnabled:
			err = resumeDeliveries(ctx, tx, bid, w.TMUpdate)
		}
		if err != nil {
			return err
		}
		out = w
		return nil
	})
	return out, err
}

// Delete soft-deletes the webhook and fails its pending deliveries, in one transaction.
func (s *WebhookStore) Delete(ctx context.Context, customerID, id string) (webhook.Webhook, error) {
	where, args, ok := scope(customerID, id)
	if !ok {
		return webhook.Webhook{}, webhook.ErrNotFound
	}
	var out webhook.Webhook
	err := inTx(ctx, s.db, func(tx *sql.Tx) error {
		w, err := scanWebhook(tx.QueryRowContext(ctx, "SELECT "+webhookColumns+" FROM webhook_webhooks"+where+" FOR UPDATE", args...))
		if errors.Is(err, sql.ErrNoRows) {
			return webhook.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("read webhook: %w", err)
		}
		now := time.Now().UTC()
		bid, _ := uid(w.ID)
		if _, err := tx.ExecContext(ctx, "UPDATE webhook_webhooks SET tm_delete = ?, tm_update = ? WHERE id = ?", now, now, bid); err != nil {
			return fmt.Errorf("delete webhook: %w", err)
		}
		if _, err := tx.ExecContext(ctx, "UPDATE webhook_deliveries SET status = ?, claim_until = NULL, claim_token = NULL, tm_update = ? WHERE webhook_id = ? AND status IN (?, ?)",
			webhook.DeliveryFailed, now, bid, webhook.DeliveryPending, statusPaused); err != nil {
			return fmt.Errorf("fail pending deliveries: %w", err)
		}
		w.TMUpdate = now
		out = w
		return nil
	})
	return out, err
}

// inTx runs fn in a transaction, committing if it returns nil.
func inTx(ctx context.Context, db *sql.DB, fn func(*sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}
