// Package mysql is the call manager's MySQL adapter: the call_calls table, written together with
// the call_outbox events of each change in one transaction, the reaper's claim of due calls, the
// renewer's claim of quotas to renew, and the idempotency records of create requests
// (call_requests).
package mysql

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-call-manager/internal/call"
	"voipbin/pkg/callapi"
	"voipbin/pkg/event"
)

// OutboxTable is the call manager's outbox.
const OutboxTable = "call_outbox"

// CallStore keeps calls in call_calls.
type CallStore struct {
	db     *sql.DB
	outbox *event.Outbox
}

// NewCallStore is the store on db.
func NewCallStore(db *sql.DB) *CallStore {
	return &CallStore{db: db, outbox: event.NewOutbox(OutboxTable)}
}

const columns = `id, customer_id, source, destination, status, direction, hangup_by, hangup_reason,
hangup_cause, sip_code, duration, metadata, node_id, sip_call_id, dial_timeout, quota, sequence, version,
probe_failures, tm_create, tm_update, tm_ringing, tm_progressing, tm_hangup, tm_deadline, tm_check, tm_renew, tm_delete, tm_alive`

func binUUID(s string) ([]byte, error) {
	u, err := uuid.Parse(s)
	if err != nil {
		return nil, err
	}
	return u[:], nil
}

type scanner interface{ Scan(dest ...any) error }

func scanCall(r scanner) (*call.Call, error) {
	var c call.Call
	var id, customer, source, destination, metadata []byte
	var status string
	var ringing, progressing, hangup, check, renew, del, alive sql.NullTime
	err := r.Scan(&id, &customer, &source, &destination, &status, &c.Direction, &c.HangupBy, &c.HangupReason,
		&c.HangupCause, &c.SIPCode, &c.Duration, &metadata, &c.NodeID, &c.SIPCallID, &c.DialTimeout, &c.Quota, &c.Sequence, &c.Version,
		&c.ProbeFailures, &c.TMCreate, &c.TMUpdate, &ringing, &progressing, &hangup, &c.TMDeadline, &check, &renew, &del, &alive)
	if err != nil {
		return nil, err
	}
	uid, err := uuid.FromBytes(id)
	if err != nil {
		return nil, fmt.Errorf("call id: %w", err)
	}
	cid, err := uuid.FromBytes(customer)
	if err != nil {
		return nil, fmt.Errorf("customer id of call %s: %w", uid, err)
	}
	c.ID, c.CustomerID, c.Status = uid.String(), cid.String(), callapi.Status(status)
	if err := json.Unmarshal(source, &c.Source); err != nil {
		return nil, fmt.Errorf("source of call %s: %w", c.ID, err)
	}
	if err := json.Unmarshal(destination, &c.Destination); err != nil {
		return nil, fmt.Errorf("destination of call %s: %w", c.ID, err)
	}
	if len(metadata) > 0 {
		if err := json.Unmarshal(metadata, &c.Metadata); err != nil {
			return nil, fmt.Errorf("metadata of call %s: %w", c.ID, err)
		}
	}
	c.TMCreate, c.TMUpdate, c.TMDeadline = c.TMCreate.UTC(), c.TMUpdate.UTC(), c.TMDeadline.UTC()
	c.TMRinging, c.TMProgressing, c.TMHangup, c.TMCheck, c.TMDelete = ptr(ringing), ptr(progressing), ptr(hangup), ptr(check), ptr(del)
	c.TMRenew, c.TMAlive = ptr(renew), ptr(alive)
	return &c, nil
}

func ptr(t sql.NullTime) *time.Time {
	if !t.Valid {
		return nil
	}
	u := t.Time.UTC()
	return &u
}

func null(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UTC()
}

// Create inserts the calls and their events in one transaction.
func (s *CallStore) Create(ctx context.Context, calls []*call.Call) ([]call.Event, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	evs, err := s.insertAll(ctx, tx, calls)
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	return evs, nil
}

// insertAll inserts the calls and their events in the caller's transaction.
func (s *CallStore) insertAll(ctx context.Context, tx *sql.Tx, calls []*call.Call) ([]call.Event, error) {
	var evs []call.Event
	for _, c := range calls {
		if err := s.insert(ctx, tx, c); err != nil {
			return nil, err
		}
		written, err := s.writeEvents(ctx, tx, c)
		if err != nil {
			return nil, err
		}
		evs = append(evs, written...)
	}
	return evs, nil
}

func (s *CallStore) insert(ctx context.Context, tx *sql.Tx, c *call.Call) error {
	id, err := binUUID(c.ID)
	if err != nil {
		return fmt.Errorf("call id %q: %w", c.ID, err)
	}
	customer, err := binUUID(c.CustomerID)
	if err != nil {
		return fmt.Errorf("customer id %q: %w", c.CustomerID, err)
	}
	source, _ := json.Marshal(c.Source)
	destination, _ := json.Marshal(c.Destination)
	var metadata any
	if c.Metadata != nil {
		b, err := json.Marshal(c.Metadata)
		if err != nil {
			return fmt.Errorf("metadata: %w", err)
		}
		metadata = b
	}
	c.Version = 1
	_, err = tx.ExecContext(ctx, "INSERT INTO call_calls ("+columns+") VALUES (?"+strings.Repeat(",?", 28)+")",
		id, customer, source, destination, string(c.Status), c.Direction, c.HangupBy, c.HangupReason,
		c.HangupCause, c.SIPCode, c.Duration, metadata, c.NodeID, c.SIPCallID, c.DialTimeout, c.Quota, c.Sequence, c.Version,
		c.ProbeFailures, c.TMCreate, c.TMUpdate, null(c.TMRinging), null(c.TMProgressing), null(c.TMHangup),
		c.TMDeadline, null(c.TMCheck), null(c.TMRenew), null(c.TMDelete), null(c.TMAlive))
	if err != nil {
		return fmt.Errorf("insert call: %w", err)
	}
	return nil
}

// writeEvents adds the call's recorded events to the outbox, in the caller's transaction.
func (s *CallStore) writeEvents(ctx context.Context, tx *sql.Tx, c *call.Call) ([]call.Event, error) {
	evs := c.TakeEvents()
	for _, e := range evs {
		env, err := event.New(e.Type, e.Call.CustomerID, "call", e.Call.ID, e.Sequence, callapi.EventData{Call: e.Call, CallID: e.Call.ID})
		if err != nil {
			return nil, err
		}
		env.EventID = e.ID
		if err := s.outbox.Add(ctx, tx, event.ExchangeCall, env); err != nil {
			return nil, err
		}
	}
	return evs, nil
}

// Get reads a call, deleted or not.
func (s *CallStore) Get(ctx context.Context, id string) (*call.Call, error) {
	bid, err := binUUID(id)
	if err != nil {
		return nil, call.ErrNotFound
	}
	c, err := scanCall(s.db.QueryRowContext(ctx, "SELECT "+columns+" FROM call_calls WHERE id = ?", bid))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, call.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get call: %w", err)
	}
	return c, nil
}

// Update locks the call, runs fn and writes the row and its events in one transaction.
func (s *CallStore) Update(ctx context.Context, id string, fn func(*call.Call) error) (*call.Call, []call.Event, error) {
	bid, err := binUUID(id)
	if err != nil {
		return nil, nil, call.ErrNotFound
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	c, err := scanCall(tx.QueryRowContext(ctx, "SELECT "+columns+" FROM call_calls WHERE id = ? FOR UPDATE", bid))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, call.ErrNotFound
	}
	if err != nil {
		return nil, nil, fmt.Errorf("lock call: %w", err)
	}
	if err := fn(c); err != nil {
		if errors.Is(err, call.ErrUnchanged) {
			c.TakeEvents()
			return c, nil, nil
		}
		return nil, nil, err
	}
	c.Version++
	_, err = tx.ExecContext(ctx, `UPDATE call_calls SET status = ?, hangup_by = ?, hangup_reason = ?, hangup_cause = ?,
sip_code = ?, duration = ?, node_id = ?, sip_call_id = ?, quota = ?, sequence = ?, version = ?, probe_failures = ?, tm_update = ?,
tm_ringing = ?, tm_progressing = ?, tm_hangup = ?, tm_check = ?, tm_renew = ?, tm_delete = ? WHERE id = ?`,
		string(c.Status), c.HangupBy, c.HangupReason, c.HangupCause, c.SIPCode, c.Duration, c.NodeID, c.SIPCallID, c.Quota,
		c.Sequence, c.Version, c.ProbeFailures, c.TMUpdate, null(c.TMRinging), null(c.TMProgressing), null(c.TMHangup),
		null(c.TMCheck), null(c.TMRenew), null(c.TMDelete), bid)
	if err != nil {
		return nil, nil, fmt.Errorf("update call: %w", err)
	}
	evs, err := s.writeEvents(ctx, tx, c)
	if err != nil {
		return nil, nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, nil, fmt.Errorf("commit: %w", err)
	}
	return c, evs, nil
}

// List reads calls newest first.
func (s *CallStore) List(ctx context.Context, f call.Filter) ([]*call.Call, error) {
	where := []string{"tm_delete IS NULL"}
	var args []any
	if f.CustomerID != "" {
		b, err := binUUID(f.CustomerID)
		if err != nil {
			return nil, fmt.Errorf("customer id %q: %w", f.CustomerID, err)
		}
		where, args = append(where, "customer_id = ?"), append(args, b)
	}
	if f.Status != "" {
		where, args = append(where, "status = ?"), append(args, string(f.Status))
	}
	if f.Direction != "" {
		where, args = append(where, "direction = ?"), append(args, f.Direction)
	}
	if f.After != nil {
		b, err := binUUID(f.After.ID)
		if err != nil {
			return nil, fmt.Errorf("cursor id: %w", err)
		}
		at := f.After.TMCreate.UTC()
		where, args = append(where, "(tm_create < ? OR (tm_create = ? AND id < ?))"), append(args, at, at, b)
	}
	q := "SELECT " + columns + " FROM call_calls WHERE " + strings.Join(where, " AND ") +
		" ORDER BY tm_create DESC, id DESC LIMIT ? OFFSET ?"
	rows, err := s.db.QueryContext(ctx, q, append(args, f.Limit, f.Offset)...)
	if err != nil {
		return nil, fmt.Errorf("list calls: %w", err)
	}
	defer rows.Close()
	var out []*call.Call
	for rows.Next() {
		c, err := scanCall(rows)
		if err != nil {
			return nil, fmt.Errorf("list calls: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list calls: %w", err)
	}
	return out, nil
}

// ClaimDue claims live calls whose check time has come, skipping rows other transactions hold,
// and moves their next check to next (or their deadline, if sooner).
func (s *CallStore) ClaimDue(ctx context.Context, now, next time.Time, limit int) ([]*call.Call, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	due, ids, err := lockDue(ctx, tx, "tm_check", now, limit)
	if err != nil || len(due) == 0 {
		return nil, err
	}
	// The next check comes at next, or at the deadline if that is sooner and still ahead (a call
	// already past it is being ended now; if that fails it is retried at next).
	n, at := next.UTC().Truncate(time.Microsecond), now.UTC()
	if _, err := tx.ExecContext(ctx, "UPDATE call_calls SET tm_check = IF(tm_deadline > ?, LEAST(?, tm_deadline), ?) WHERE id IN (?"+
		strings.Repeat(",?", len(ids)-1)+")", append([]any{at, n, n}, ids...)...); err != nil {
		return nil, fmt.Errorf("push back due calls: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	for _, c := range due {
		check := n
		if c.TMDeadline.After(at) && c.TMDeadline.Before(n) {
			check = c.TMDeadline
		}
		c.TMCheck = &check
	}
	return due, nil
}

// lockDue reads and locks, in tx, up to limit calls whose time column has come, skipping rows
// other transactions hold; it returns them and their ids as query arguments.
func lockDue(ctx context.Context, tx *sql.Tx, column string, now time.Time, limit int) ([]*call.Call, []any, error) {
	rows, err := tx.QueryContext(ctx, "SELECT "+columns+" FROM call_calls WHERE "+column+" <= ? ORDER BY "+column+
		" LIMIT ? FOR UPDATE SKIP LOCKED", now.UTC(), limit)
	if err != nil {
		return nil, nil, fmt.Errorf("claim calls by %s: %w", column, err)
	}
	defer rows.Close()
	var due []*call.Call
	var ids []any
	for rows.Next() {
		c, err := scanCall(rows)
		if err != nil {
			return nil, nil, fmt.Errorf("claim calls by %s: %w", column, err)
		}
		b, _ := binUUID(c.ID)
		due, ids = append(due, c), append(ids, b)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("claim calls by %s: %w", column, err)
	}
	return due, ids, nil
}

// ClaimRenewals claims live calls whose quota renewal is due, skipping rows other transactions
// hold, and moves their renewal to lease: if this instance dies in the middle of one, another
// takes it over then; if it finishes, it writes the next renewal itself (SetRenewal, Update).
func (s *CallStore) ClaimRenewals(ctx context.Context, now, lease time.Time, limit int) ([]*call.Call, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	due, ids, err := lockDue(ctx, tx, "tm_renew", now, limit)
	if err != nil || len(due) == 0 {
		return nil, err
	}
	l := lease.UTC().Truncate(time.Microsecond)
	if _, err := tx.ExecContext(ctx, "UPDATE call_calls SET tm_renew = ? WHERE id IN (?"+strings.Repeat(",?", len(ids)-1)+")",
		append([]any{l}, ids...)...); err != nil {
		return nil, fmt.Errorf("lease renewals: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	for _, c := range due {
		c.TMRenew = &l
	}
	return due, nil
}

// SetRenewal sets when the call's quota is renewed next (nil: never again), unless it has ended.
func (s *CallStore) SetRenewal(ctx context.Context, id string, at *time.Time) error {
	bid, err := binUUID(id)
	if err != nil {
		return call.ErrNotFound
	}
	if _, err := s.db.ExecContext(ctx, "UPDATE call_calls SET tm_renew = ? WHERE id = ? AND status <> ?",
		null(at), bid, string(callapi.StatusHangup)); err != nil {
		return fmt.Errorf("set renewal: %w", err)
	}
	return nil
}

// SetAlive records a probe that found the call live at time at, which also clears the failed
// probes. Like the failures it is the reaper's own: the version and the cache do not change.
func (s *CallStore) SetAlive(ctx context.Context, id string, at time.Time) error {
	bid, err := binUUID(id)
	if err != nil {
		return call.ErrNotFound
	}
	if _, err := s.db.ExecContext(ctx, "UPDATE call_calls SET probe_failures = 0, tm_alive = GREATEST(COALESCE(tm_alive, ?), ?) WHERE id = ?",
		at.UTC(), at.UTC(), bid); err != nil {
		return fmt.Errorf("set alive: %w", err)
	}
	return nil
}

// SetProbeFailures records the consecutive failed liveness probes of a call.
func (s *CallStore) SetProbeFailures(ctx context.Context, id string, n int) error {
	bid, err := binUUID(id)
	if err != nil {
		return call.ErrNotFound
	}
	if _, err := s.db.ExecContext(ctx, "UPDATE call_calls SET probe_failures = ? WHERE id = ?", n, bid); err != nil {
		return fmt.Errorf("set probe failures: %w", err)
	}
	return nil
}
