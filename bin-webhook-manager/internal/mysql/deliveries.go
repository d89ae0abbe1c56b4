package mysql

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-webhook-manager/internal/webhook"
)

// DeliveryStore keeps deliveries and their attempts: the fan-out writes them, the dispatcher
// claims and records them, the API reads and retries them.
type DeliveryStore struct {
	db    *sql.DB
	hooks *WebhookStore
}

// NewDeliveryStore is the store on db.
func NewDeliveryStore(db *sql.DB) *DeliveryStore {
	return &DeliveryStore{db: db, hooks: NewWebhookStore(db)}
}

// EnabledWebhooks lists the enabled webhooks of a customer (for the fan-out).
func (s *DeliveryStore) EnabledWebhooks(ctx context.Context, customerID string) ([]webhook.Webhook, error) {
	return s.hooks.EnabledWebhooks(ctx, customerID)
}

// AddDeliveries inserts ds in one statement, skipping any whose (webhook, event) pair exists, and
// returns how many were new.
func (s *DeliveryStore) AddDeliveries(ctx context.Context, ds []webhook.Delivery) (int, error) {
	if len(ds) == 0 {
		return 0, nil
	}
	var q strings.Builder
	q.WriteString("INSERT INTO webhook_deliveries (id, webhook_id, customer_id, event_id, event_type, resource_id, sequence, event_time, payload, status, next_attempt, window_start, tm_create, tm_update) VALUES ")
	args := make([]any, 0, len(ds)*14)
	for i, d := range ds {
		id, ok1 := uid(d.ID)
		hook, ok2 := uid(d.WebhookID)
		customer, ok3 := uid(d.CustomerID)
		ev, ok4 := uid(d.EventID)
		if !ok1 || !ok2 || !ok3 {
			return 0, fmt.Errorf("delivery %q: ids must be UUIDs", d.ID)
		}
		if !ok4 {
			return 0, fmt.Errorf("event id %q is not a UUID", d.EventID)
		}
		if i > 0 {
			q.WriteString(", ")
		}
		q.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
		args = append(args, id, hook, customer, ev, d.EventType, d.ResourceID, d.Sequence, d.EventTime.UTC(), d.Payload,
			d.Status, d.NextAttempt, d.TMCreate, d.TMCreate, d.TMCreate)
	}
	// A no-op update instead of INSERT IGNORE: only the duplicate is skipped, other problems
	// (a value too long) stay errors instead of becoming warnings.
	q.WriteString(" ON DUPLICATE KEY UPDATE id = id")
	res, err := s.db.ExecContext(ctx, q.String(), args...)
	if err != nil {
		return 0, fmt.Errorf("insert deliveries: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, err
	}
	return int(n), nil
}

const deliveryColumns = "d.id, d.webhook_id, d.customer_id, d.event_id, d.event_type, d.resource_id, d.sequence, d.event_time, d.status, d.next_attempt, d.attempt_count, d.tm_create"

func scanDelivery(s scanner, extra ...any) (webhook.Delivery, error) {
	var d webhook.Delivery
	var id, hook, customer, ev []byte
	dest := append([]any{&id, &hook, &customer, &ev, &d.EventType, &d.ResourceID, &d.Sequence, &d.EventTime, &d.Status,
		&d.NextAttempt, &d.AttemptCount, &d.TMCreate}, extra...)
	if err := s.Scan(dest...); err != nil {
		return webhook.Delivery{}, err
	}
	d.ID, d.WebhookID, d.CustomerID, d.EventID = uidString(id), uidString(hook), uidString(customer), uidString(ev)
	if d.Status == statusPaused {
		d.Status = webhook.DeliveryPending
	}
	return d, nil
}

// pageToken is the position after the last delivery of a page: its creation and id.
func pageToken(d webhook.Delivery) string {
	bid, _ := uid(d.ID)
	raw := strconv.FormatInt(d.TMCreate.UnixMicro(), 10) + "." + hex.EncodeToString(bid)
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

func parsePageToken(tok string) (time.Time, []byte, error) {
	bad := &webhook.FieldError{Field: "page_token", Description: "is not a token from a previous page"}
	raw, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return time.Time{}, nil, bad
	}
	us, hexID, ok := strings.Cut(string(raw), ".")
	if !ok {
		return time.Time{}, nil, bad
	}
	n, err := strconv.ParseInt(us, 10, 64)
	if err != nil {
		return time.Time{}, nil, bad
	}
	id, err := hex.DecodeString(hexID)
	if err != nil || len(id) != 16 {
		return time.Time{}, nil, bad
	}
	return time.UnixMicro(n).UTC(), id, nil
}

// Deliveries is a page of a webhook's deliveries, newest first, with their attempts.
func (s *DeliveryStore) Deliveries(ctx context.Context, webhookID string, pageSize int, token string) ([]webhook.Delivery, string, error) {
	hook, ok := uid(webhookID)
	if !ok {
		return nil, "", webhook.ErrNotFound
	}
	q := "SELECT " + deliveryColumns + " FROM webhook_deliveries d WHERE d.webhook_id = ?"
	args := []any{hook}
	if token != "" {
		at, id, err := parsePageToken(token)
		if err != nil {
			return nil, "", err
		}
		q += " AND (d.tm_create < ? OR (d.tm_create = ? AND d.id < ?))"
		args = append(args, at, at, id)
	}
	q += " ORDER BY d.tm_create DESC, d.id DESC LIMIT ?"
	rows, err := s.db.QueryContext(ctx, q, append(args, pageSize+1)...)
	if err != nil {
		return nil, "", fmt.Errorf("list deliveries: %w", err)
	}
	defer rows.Close()
	out := []webhook.Delivery{}
	for rows.Next() {
		d, err := scanDelivery(rows)
		if err != nil {
			return nil, "", fmt.Errorf("list deliveries: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("list deliveries: %w", err)
	}
	next := ""
	if len(out) > pageSize {
		out = out[:pageSize]
		next = pageToken(out[pageSize-1])
	}
	if err := s.attachAttempts(ctx, out); err != nil {
		return nil, "", err
	}
	return out, next, nil
}

func (s *DeliveryStore) attachAttempts(ctx context.Context, ds []webhook.Delivery) error {
	if len(ds) == 0 {
		return nil
	}
	index := make(map[string]int, len(ds))
	args := make([]any, len(ds))
	for i, d := range ds {
		index[d.ID] = i
		args[i], _ = uid(d.ID)
		ds[i].Attempts = []webhook.Attempt{}
	}
	rows, err := s.db.QueryContext(ctx, "SELECT delivery_id, tm_attempt, http_status, latency_ms, error, response FROM webhook_attempts WHERE delivery_id IN (?"+
		strings.Repeat(", ?", len(ds)-1)+") ORDER BY id", args...)
	if err != nil {
		return fmt.Errorf("list attempts: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id []byte
		var a webhook.Attempt
		var ms int64
		if err := rows.Scan(&id, &a.At, &a.HTTPStatus, &ms, &a.Error, &a.Response); err != nil {
			return fmt.Errorf("list attempts: %w", err)
		}
		a.Latency = time.Duration(ms) * time.Millisecond
		i := index[uidString(id)]
		ds[i].Attempts = append(ds[i].Attempts, a)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list attempts: %w", err)
	}
	return nil
}

// Delivery reads one delivery of a webhook with its attempts.
func (s *DeliveryStore) Delivery(ctx context.Context, webhookID, deliveryID string) (webhook.Delivery, error) {
	hook, ok1 := uid(webhookID)
	id, ok2 := uid(deliveryID)
	if !ok1 || !ok2 {
		return webhook.Delivery{}, webhook.ErrDeliveryNotFound
	}
	d, err := scanDelivery(s.db.QueryRowContext(ctx, "SELECT "+deliveryColumns+" FROM webhook_deliveries d WHERE d.id = ? AND d.webhook_id = ?", id, hook))
	if errors.Is(err, sql.ErrNoRows) {
		return webhook.Delivery{}, webhook.ErrDeliveryNotFound
	}
	if err != nil {
		return webhook.Delivery{}, fmt.Errorf("read delivery: %w", err)
	}
	ds := []webhook.Delivery{d}
	if err := s.attachAttempts(ctx, ds); err != nil {
		return webhook.Delivery{}, err
	}
	return ds[0], nil
}

// Retry makes a delivery pending and due at now with a fresh retry window. A delivery being
// attempted right now keeps its lease: the retry takes effect if that attempt does not settle it.
func (s *DeliveryStore) Retry(ctx context.Context, webhookID, deliveryID string, now time.Time) (webhook.Delivery, error) {
	hook, ok1 := uid(webhookID)
	id, ok2 := uid(deliveryID)
	if !ok1 || !ok2 {
		return webhook.Delivery{}, webhook.ErrDeliveryNotFound
	}
	res, err := s.db.ExecContext(ctx, "UPDATE webhook_deliveries SET status = ?, next_attempt = ?, window_start = ?, window_attempts = 0, tm_update = ? WHERE id = ? AND webhook_id = ?",
		webhook.DeliveryPending, now, now, now, id, hook) // the service retries only for an enabled webhook
	if err != nil {
		return webhook.Delivery{}, fmt.Errorf("retry delivery: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return webhook.Delivery{}, err
	} else if n == 0 {
		return webhook.Delivery{}, webhook.ErrDeliveryNotFound
	}
	return s.Delivery(ctx, webhookID, deliveryID)
}

// statusPaused is a pending delivery of a disabled webhook. It is kept out of the "pending" status
// so that claims and the backlog never have to look at webhooks: the API shows it as pending, and
// it becomes pending again when its webhook is enabled.
const statusPaused = "paused"

// pauseDeliveries and resumeDeliveries move a webhook's waiting deliveries in and out of the
// paused state, inside the transaction that disables or enables it.
func pauseDeliveries(ctx context.Context, tx *sql.Tx, hook []byte, now time.Time) error {
	_, err := tx.ExecContext(ctx, "UPDATE webhook_deliveries SET status = ?, tm_update = ? WHERE webhook_id = ? AND status = ?",
		statusPaused, now, hook, webhook.DeliveryPending)
	if err != nil {
		return fmt.Errorf("pause deliveries: %w", err)
	}
	return nil
}

func resumeDeliveries(ctx context.Context, tx *sql.Tx, hook []byte, now time.Time) error {
	_, err := tx.ExecContext(ctx, "UPDATE webhook_deliveries SET status = ?, tm_update = ? WHERE webhook_id = ? AND status = ?",
		webhook.DeliveryPending, now, hook, statusPaused)
	if err != nil {
		return fmt.Errorf("resume deliveries: %w", err)
	}
	return nil
}

// Claim leases up to limit due deliveries, heads of their (webhook, resource) chains only.
//
// It runs in two steps. First a plain read walks the due index in next_attempt order and picks
// due heads: pending, due, not leased, with no pending delivery of a lower sequence in the same
// chain (a chain's head comes before its followers in that order, so few rows are read past the
// limit). Then a short transaction locks those rows with FOR UPDATE SKIP LOCKED, re-checks that
// they are still due and unleased (a locking read sees the latest commit), and leases them. A
// chain's head stays pending while leased, so its successor is never picked until the head is
// settled, even by another instance. (One locking statement with the chain check in a subquery
// would not do: SKIP LOCKED would skip a head locked by another claimer inside the subquery too,
// and take its successor.) Deliveries of disabled webhooks are paused, not pending, so neither
// step looks at webhooks; one found pending anyway (the fan-out raced a disable) is paused here.
func (s *DeliveryStore) Claim(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]webhook.Claim, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT d.id FROM webhook_deliveries d FORCE INDEX (idx_webhook_deliveries_due)
WHERE d.status = ? AND d.next_attempt <= ? AND (d.claim_until IS NULL OR d.claim_until <= ?)
  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.webhook_id = d.webhook_id AND p.resource_id = d.resource_id
    AND p.status = ? AND (p.sequence < d.sequence OR (p.sequence = d.sequence AND p.id < d.id)))
ORDER BY d.next_attempt LIMIT ?`,
		webhook.DeliveryPending, now, now, webhook.DeliveryPending, limit)
	if err != nil {
		return nil, fmt.Errorf("find due deliveries: %w", err)
	}
	var ids []any
	for rows.Next() {
		var id []byte
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("find due deliveries: %w", err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("find due deliveries: %w", err)
	}
	if len(ids) == 0 {
		return nil, nil
	}

	var claims []webhook.Claim
	err = inTx(ctx, s.db, func(tx *sql.Tx) error {
		in := "(?" + strings.Repeat(", ?", len(ids)-1) + ")"
		rows, err := tx.QueryContext(ctx, "SELECT "+deliveryColumns+", d.payload, d.window_start, d.window_attempts FROM webhook_deliveries d WHERE d.id IN "+in+
			" AND d.status = ? AND d.next_attempt <= ? AND (d.claim_until IS NULL OR d.claim_until <= ?) FOR UPDATE SKIP LOCKED",
			append(ids, webhook.DeliveryPending, now, now)...)
		if err != nil {
			return fmt.Errorf("lock due deliveries: %w", err)
		}
		var locked []webhook.Claim
		hooks := map[string]*webhook.Webhook{}
		for rows.Next() {
			var c webhook.Claim
			var payload []byte
			d, err := scanDelivery(rows, &payload, &c.WindowStart, &c.WindowAttempts)
			if err != nil {
				rows.Close()
				return fmt.Errorf("lock due deliveries: %w", err)
			}
			c.Delivery = d
			c.Payload = payload
			locked = append(locked, c)
			hooks[d.WebhookID] = nil
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("lock due deliveries: %w", err)
		}
		if len(locked) == 0 {
			return nil
		}
		// The webhooks' rows are read, not locked: a webhook disabled after this commit still gets
		// this one attempt.
		for id := range hooks {
			bid, _ := uid(id)
			var deleted sql.NullTime
			w, err := scanWebhook(tx.QueryRowContext(ctx, "SELECT "+webhookColumns+", tm_delete FROM webhook_webhooks WHERE id = ?", bid), &deleted)
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return fmt.Errorf("read webhook of a delivery: %w", err)
			}
			if deleted.Valid || w.Status != webhook.StatusEnabled {
				if err := pauseDeliveries(ctx, tx, bid, now); err != nil {
					return err
				}
				continue
			}
			hooks[id] = &w
		}
		token := uuid.New()
		var leased []any
		for _, c := range locked {
			if w := hooks[c.WebhookID]; w != nil {
				c.Webhook = *w
				c.Token = token.String()
				claims = append(claims, c)
				bid, _ := uid(c.ID)
				leased = append(leased, bid)
			}
		}
		if len(leased) == 0 {
			return nil
		}
		// One token for the batch: it proves the lease of each of them.
		_, err = tx.ExecContext(ctx, "UPDATE webhook_deliveries SET claim_until = ?, claim_token = ? WHERE id IN (?"+strings.Repeat(", ?", len(leased)-1)+")",
			append([]any{now.Add(lease), token[:]}, leased...)...)
		if err != nil {
			return fmt.Errorf("lease deliveries: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return claims, nil
}

// Record saves attempts and their decisions, all in one transaction (one commit for the batch).
// When a delivery is rescheduled, the later deliveries of its chain are pushed back to the same
// time, so claims do not keep reading rows that must wait for their head anyway; when it is
// settled, followers it had pushed back are released. A 410 disables the webhook and pauses its
// other deliveries. A record whose lease was lost saves only its attempt.
func (s *DeliveryStore) Record(ctx context.Context, rs []webhook.Recorded) error {
	if len(rs) == 0 {
		return nil
	}
	now := time.Now().UTC()
	return inTx(ctx, s.db, func(tx *sql.Tx) error {
		q := "INSERT INTO webhook_attempts (delivery_id, tm_attempt, http_status, latency_ms, error, response) VALUES (?, ?, ?, ?, ?, ?)" +
			strings.Repeat(", (?, ?, ?, ?, ?, ?)", len(rs)-1)
		args := make([]any, 0, 6*len(rs))
		for _, r := range rs {
			id, _ := uid(r.Claim.ID)
			response := r.Attempt.Response
			if response == nil {
				response = []byte{}
			}
			args = append(args, id, r.Attempt.At, r.Attempt.HTTPStatus, r.Attempt.Latency.Milliseconds(), r.Attempt.Error, response)
		}
		if _, err := tx.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("insert attempts: %w", err)
		}
		for _, r := range rs {
			if err := settle(ctx, tx, r, now); err != nil {
				return err
			}
		}
		return nil
	})
}

func settle(ctx context.Context, tx *sql.Tx, r webhook.Recorded, now time.Time) error {
	c, dec := r.Claim, r.Decision
	id, _ := uid(c.ID)
	hook, _ := uid(c.WebhookID)
	tok, _ := uid(c.Token)
	next := dec.NextAttempt
	if dec.Status != webhook.DeliveryPending || next.IsZero() {
		next = now
	}
	res, err := tx.ExecContext(ctx, `UPDATE webhook_deliveries SET status = ?, next_attempt = ?, claim_until = NULL, claim_token = NULL,
window_attempts = window_attempts + 1, attempt_count = attempt_count + 1, tm_update = ? WHERE id = ? AND claim_token = ?`,
		dec.Status, next, now, id, tok)
	if err != nil {
		return fmt.Errorf("update delivery: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return nil // the lease was lost: another dispatcher owns the delivery now
	}
	if dec.Status == webhook.DeliveryPending {
		if _, err := tx.ExecContext(ctx, `UPDATE webhook_deliveries SET next_attempt = ? WHERE webhook_id = ? AND resource_id = ?
AND status = ? AND sequence > ? AND next_attempt < ?`, next, hook, c.ResourceID, webhook.DeliveryPending, c.Sequence, next); err != nil {
			return fmt.Errorf("postpone the chain: %w", err)
		}
	} else {
		// Settled (perhaps early, by a manual retry): followers that were only waiting for it,
		// never tried themselves, are due now rather than at the time they were postponed to.
		if _, err := tx.ExecContext(ctx, `UPDATE webhook_deliveries SET next_attempt = ? WHERE webhook_id = ? AND resource_id = ?
AND status = ? AND sequence > ? AND window_attempts = 0 AND next_attempt > ?`, now, hook, c.ResourceID, webhook.DeliveryPending, c.Sequence, now); err != nil {
			return fmt.Errorf("release the chain: %w", err)
		}
	}
	if dec.Disable {
		if _, err := tx.ExecContext(ctx, "UPDATE webhook_webhooks SET status = ?, tm_update = ? WHERE id = ?", webhook.StatusDisabled, now, hook); err != nil {
			return fmt.Errorf("disable webhook: %w", err)
		}
		if err := pauseDeliveries(ctx, tx, hook, now); err != nil {
			return err
		}
	}
	return nil
}

// Backlog counts the pending deliveries (of enabled webhooks: the others' are paused) and finds
// the oldest one's creation.
func (s *DeliveryStore) Backlog(ctx context.Context) (int, time.Time, error) {
	var n int
	var oldest sql.NullTime
	err := s.db.QueryRowContext(ctx, "SELECT COUNT(*), MIN(tm_create) FROM webhook_deliveries WHERE status = ?",
		webhook.DeliveryPending).Scan(&n, &oldest)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("measure backlog: %w", err)
	}
	return n, oldest.Time, nil
}
