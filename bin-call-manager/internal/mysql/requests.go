package mysql

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/google/uuid"

	"voipbin/bin-call-manager/internal/call"
)

// The idempotency records of create requests live in call_requests, one row per customer and
// key (its primary key). The CallStore implements call.Requests on it.

const requestColumns = "customer_id, key_hash, idempotency_key, request_hash, call_ids, state, attempt, tm_lease, tm_create, tm_update"

func keyHash(key string) []byte {
	h := sha256.Sum256([]byte(key))
	return h[:]
}

// requestKey is the primary key of a request's row.
func requestKey(customerID, key string) ([]byte, []byte, error) {
	customer, err := binUUID(customerID)
	if err != nil {
		return nil, nil, fmt.Errorf("customer id %q: %w", customerID, err)
	}
	return customer, keyHash(key), nil
}

// Claim inserts r as pending, or returns the request the key already has and
// call.ErrRequestExists.
func (s *CallStore) Claim(ctx context.Context, r *call.Request) (*call.Request, error) {
	customer, kh, err := requestKey(r.CustomerID, r.Key)
	if err != nil {
		return nil, err
	}
	attempt, err := binUUID(r.Attempt)
	if err != nil {
		return nil, fmt.Errorf("attempt id %q: %w", r.Attempt, err)
	}
	ids, _ := json.Marshal(r.CallIDs)
	now := time.Now().UTC()
	_, err = s.db.ExecContext(ctx, "INSERT INTO call_requests ("+requestColumns+") VALUES (?,?,?,?,?,?,?,?,?,?)",
		customer, kh, r.Key, r.Hash[:], ids, string(r.State), attempt, r.TMLease.UTC(), r.TMCreate.UTC(), now)
	var me *mysql.MySQLError
	if errors.As(err, &me) && me.Number == 1062 { // ER_DUP_ENTRY
		prev, err := s.Lookup(ctx, r.CustomerID, r.Key)
		if errors.Is(err, call.ErrNotFound) {
			// Forgotten in between: claim again.
			return s.Claim(ctx, r)
		}
		if err != nil {
			return nil, err
		}
		return prev, call.ErrRequestExists
	}
	if err != nil {
		return nil, fmt.Errorf("claim idempotency key: %w", err)
	}
	return nil, nil
}

// TakeOver moves a pending request from attempt prev to attempt, with a new lease.
func (s *CallStore) TakeOver(ctx context.Context, customerID, key, prev, attempt string, lease time.Time) (bool, error) {
	customer, kh, err := requestKey(customerID, key)
	if err != nil {
		return false, err
	}
	p, err := binUUID(prev)
	if err != nil {
		return false, fmt.Errorf("attempt id %q: %w", prev, err)
	}
	a, err := binUUID(attempt)
	if err != nil {
		return false, fmt.Errorf("attempt id %q: %w", attempt, err)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE call_requests SET attempt = ?, tm_lease = ?, tm_update = ?
WHERE customer_id = ? AND key_hash = ? AND attempt = ? AND state = ?`,
		a, lease.UTC(), time.Now().UTC(), customer, kh, p, string(call.RequestPending))
	if err != nil {
		return false, fmt.Errorf("take over idempotency key: %w", err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// Commit inserts the calls and their events and marks the request created, in one transaction,
// if attempt still owns the pending request.
func (s *CallStore) Commit(ctx context.Context, customerID, key, attempt string, calls []*call.Call) ([]call.Event, error) {
	customer, kh, err := requestKey(customerID, key)
	if err != nil {
		return nil, err
	}
	a, err := binUUID(attempt)
	if err != nil {
		return nil, fmt.Errorf("attempt id %q: %w", attempt, err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	// First, so that the row lock fences a concurrent take-over until this transaction ends.
	res, err := tx.ExecContext(ctx, `UPDATE call_requests SET state = ?, tm_update = ?
WHERE customer_id = ? AND key_hash = ? AND attempt = ? AND state = ?`,
		string(call.RequestCreated), time.Now().UTC(), customer, kh, a, string(call.RequestPending))
	if err != nil {
		return nil, fmt.Errorf("mark request created: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		if err != nil {
			return nil, fmt.Errorf("mark request created: %w", err)
		}
		return nil, call.ErrAttemptLost
	}
	evs, err := s.insertAll(ctx, tx, calls)
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	return evs, nil
}

// Lookup reads the request of a key.
func (s *CallStore) Lookup(ctx context.Context, customerID, key string) (*call.Request, error) {
	customer, kh, err := requestKey(customerID, key)
	if err != nil {
		return nil, err
	}
	var r call.Request
	var cust, hash, ids, attempt []byte
	var state string
	err = s.db.QueryRowContext(ctx, "SELECT "+requestColumns+" FROM call_requests WHERE customer_id = ? AND key_hash = ?", customer, kh).
		Scan(&cust, new([]byte), &r.Key, &hash, &ids, &state, &attempt, &r.TMLease, &r.TMCreate, new(time.Time))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, call.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("look up idempotency key: %w", err)
	}
	r.CustomerID, r.State = customerID, call.RequestState(state)
	copy(r.Hash[:], hash)
	if err := json.Unmarshal(ids, &r.CallIDs); err != nil {
		return nil, fmt.Errorf("call ids of an idempotency key: %w", err)
	}
	u, err := uuid.FromBytes(attempt)
	if err != nil {
		return nil, fmt.Errorf("attempt of an idempotency key: %w", err)
	}
	r.Attempt = u.String()
	r.TMLease, r.TMCreate = r.TMLease.UTC(), r.TMCreate.UTC()
	return &r, nil
}

// Forget deletes the pending request owned by attempt.
func (s *CallStore) Forget(ctx context.Context, customerID, key, attempt string) (bool, error) {
	customer, kh, err := requestKey(customerID, key)
	if err != nil {
		return false, err
	}
	a, err := binUUID(attempt)
	if err != nil {
		return false, fmt.Errorf("attempt id %q: %w", attempt, err)
	}
	res, err := s.db.ExecContext(ctx, "DELETE FROM call_requests WHERE customer_id = ? AND key_hash = ? AND attempt = ? AND state = ?",
		customer, kh, a, string(call.RequestPending))
	if err != nil {
		return false, fmt.Errorf("forget idempotency key: %w", err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// PurgeRequests deletes the records of requests created before before, at most limit of them,
// and returns how many it deleted.
func (s *CallStore) PurgeRequests(ctx context.Context, before time.Time, limit int) (int, error) {
	res, err := s.db.ExecContext(ctx, "DELETE FROM call_requests WHERE tm_create < ? LIMIT ?", before.UTC(), limit)
	if err != nil {
		return 0, fmt.Errorf("purge idempotency keys: %w", err)
	}
	n, err := res.RowsAffected()
	return int(n), err
}
