// Package mysql is the billing manager's MySQL adapter: accounts, the ledger and reservations in
// the billing_* tables, each operation in one transaction together with its outbox events, and the
// sweeper that expires reservations whose call.ended never came.
//
// Transactions run at READ COMMITTED. Correctness comes from the account's row lock (every
// decision is made under SELECT … FOR UPDATE on the account, and reads after it see every commit
// made before the lock was granted); READ COMMITTED keeps InnoDB from taking gap locks on the
// reservation and ledger indexes, which under REPEATABLE READ would make concurrent gate requests
// of different customers deadlock on each other's random call ids.
package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/google/uuid"

	"voipbin/bin-billing-manager/internal/billing"
	"voipbin/bin-billing-manager/internal/contract"
	"voipbin/pkg/event"
)

// OutboxTable is the billing manager's outbox.
const OutboxTable = "billing_outbox"

// Options tune a Store.
type Options struct {
	// Exchange receives the billing events (default event.ExchangeBilling).
	Exchange string
	// OnCommit runs after a transaction that added events commits (the relay's Kick).
	OnCommit func()
}

// Store keeps accounts, reservations and the ledger. It implements billing.Store and
// billing.Reader.
type Store struct {
	db       *sql.DB
	outbox   *event.Outbox
	exchange string
	onCommit func()
}

// NewStore makes a store over db (migrated by migrations.FS).
func NewStore(db *sql.DB, opts Options) *Store {
	if opts.Exchange == "" {
		opts.Exchange = event.ExchangeBilling
	}
	if opts.OnCommit == nil {
		opts.OnCommit = func() {}
	}
	return &Store{db: db, outbox: event.NewOutbox(OutboxTable), exchange: opts.Exchange, onCommit: opts.OnCommit}
}

var txOptions = &sql.TxOptions{Isolation: sql.LevelReadCommitted}

// inTx runs fn in a transaction and commits it; events reports whether the relay should be kicked.
func (s *Store) inTx(ctx context.Context, fn func(tx *sql.Tx) (events bool, err error)) error {
	tx, err := s.db.BeginTx(ctx, txOptions)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	events, err := fn(tx)
	if err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if events {
		s.onCommit()
	}
	return nil
}

// bin is the BINARY(16) form of a canonical UUID; the domain has validated it.
func bin(id string) ([]byte, error) {
	u, err := uuid.Parse(id)
	if err != nil {
		return nil, fmt.Errorf("id %q: %w", id, err)
	}
	return u[:], nil
}

func mustBin(id string) []byte {
	b, err := bin(id)
	if err != nil {
		panic(err) // ids reaching the store were validated by the domain
	}
	return b
}

func str(b []byte) string {
	u, err := uuid.FromBytes(b)
	if err != nil {
		return ""
	}
	return u.String()
}

func nullBin(id string) any {
	if id == "" {
		return nil
	}
	return mustBin(id)
}

func isDuplicate(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1062
}

// Create inserts a new account, or does nothing if the customer has one.
func (s *Store) Create(ctx context.Context, a billing.Account, entries []billing.Entry, events []billing.Event) (bool, error) {
	created := false
	err := s.inTx(ctx, func(tx *sql.Tx) (bool, error) {
		_, err := tx.ExecContext(ctx, `INSERT INTO billing_accounts (id, customer_id, currency, balance, sequence, tm_create, tm_update)
			VALUES (?, ?, ?, ?, ?, ?, ?)`, mustBin(a.ID), mustBin(a.CustomerID), a.Currency, a.Balance, a.Sequence, a.TMCreate, a.TMUpdate)
		if isDuplicate(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("insert account: %w", err)
		}
		if err := s.write(ctx, tx, entries, events); err != nil {
			return false, err
		}
		created = true
		return len(events) > 0, nil
	})
	return created && err == nil, err
}

const accountColumns = "id, customer_id, currency, balance, sequence, tm_create, tm_update"

func scanAccount(sc interface{ Scan(...any) error }, extra ...any) (billing.Account, error) {
	var a billing.Account
	var id, customer []byte
	if err := sc.Scan(append([]any{&id, &customer, &a.Currency, &a.Balance, &a.Sequence, &a.TMCreate, &a.TMUpdate}, extra...)...); err != nil {
		return billing.Account{}, err
	}
	a.ID, a.CustomerID = str(id), str(customer)
	return a, nil
}

// Update locks the account and writes decide's change in one transaction: BEGIN, the lock, one
// read of what the decision needs, the writes, COMMIT.
func (s *Store) Update(ctx context.Context, ref billing.Ref, callID string, now time.Time, decide func(billing.Locked) (billing.Change, error)) error {
	return s.inTx(ctx, func(tx *sql.Tx) (bool, error) {
		where, key := "customer_id = ?", ref.CustomerID
		if ref.ID != "" {
			where, key = "id = ?", ref.ID
		}
		a, err := scanAccount(tx.QueryRowContext(ctx, "SELECT "+accountColumns+" FROM billing_accounts WHERE "+where+" FOR UPDATE", mustBin(key)))
		if errors.Is(err, sql.ErrNoRows) {
			return false, billing.ErrAccountNotFound
		}
		if err != nil {
			return false, fmt.Errorf("lock account: %w", err)
		}
		l, err := lockedState(ctx, tx, a, callID, now)
		if err != nil {
			return false, err
		}
		ch, err := decide(l)
		if err != nil {
			return false, err
		}
		return len(ch.Events) > 0, s.apply(ctx, tx, a.ID, callID, ch)
	})
}

// lockedState reads, in one statement after the account's lock is held (so it sees every commit
// made before), the account's active reservations, the call's reservation and whether the call is
// in the ledger. The reservation row is not locked: a release racing with the decision either
// makes the gate's insert collide (ErrReservationReleased) or finds the row released already.
func lockedState(ctx context.Context, tx *sql.Tx, a billing.Account, callID string, now time.Time) (billing.Locked, error) {
	call := nullBin(callID) // NULL matches nothing
	var (
		reserved               int64
		charged                bool
		rCall, rAccount        []byte
		rDest, rReason         sql.NullString
		rAmount, rRate         sql.NullInt64
		rGranted               sql.NullInt64
		rCreate, rExpire, rRel sql.NullTime
	)
	err := tx.QueryRowContext(ctx, `SELECT
		(SELECT COALESCE(SUM(amount), 0) FROM billing_reservations WHERE account_id = ? AND tm_release IS NULL AND tm_expire > ?),
		EXISTS (SELECT 1 FROM billing_ledger WHERE call_id = ?),
		r.call_id, r.account_id, r.destination_type, r.amount, r.granted, r.rate_per_minute, r.tm_create, r.tm_expire, r.tm_release, r.release_reason
		FROM (SELECT 1 AS one) AS x LEFT JOIN billing_reservations r ON r.call_id = ?`,
		mustBin(a.ID), now, call, call).
		Scan(&reserved, &charged, &rCall, &rAccount, &rDest, &rAmount, &rGranted, &rRate, &rCreate, &rExpire, &rRel, &rReason)
	if err != nil {
		return billing.Locked{}, fmt.Errorf("read reservations and ledger: %w", err)
	}
	a.Reserved = reserved
	l := billing.Locked{Account: a, Charged: charged}
	if rCall == nil {
		return l, nil
	}
	r := billing.Reservation{CallID: str(rCall), DestinationType: rDest.String, Amount: rAmount.Int64, Granted: int(rGranted.Int64),
		RatePerMinute: rRate.Int64, TMCreate: rCreate.Time, TMExpire: rExpire.Time, ReleaseReason: rReason.String}
	if rRel.Valid {
		r.TMRelease = &rRel.Time
	}
	if rAccount != nil {
		if r.AccountID = str(rAccount); r.AccountID != a.ID {
			return l, nil // another customer's call id: this account knows nothing of it
		}
	}
	l.Reservation = &r
	return l, nil
}

func (s *Store) apply(ctx context.Context, tx *sql.Tx, accountID, callID string, ch billing.Change) error {
	if a := ch.Account; a != nil {
		if _, err := tx.ExecContext(ctx, "UPDATE billing_accounts SET balance = ?, sequence = ?, tm_update = ? WHERE id = ?",
			a.Balance, a.Sequence, a.TMUpdate, mustBin(a.ID)); err != nil {
			return fmt.Errorf("update account: %w", err)
		}
	}
	if r := ch.Reserve; r != nil {
		_, err := tx.ExecContext(ctx, `INSERT INTO billing_reservations (call_id, account_id, destination_type, amount, granted, rate_per_minute, tm_create, tm_expire)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, mustBin(r.CallID), mustBin(r.AccountID), r.DestinationType, r.Amount, r.Granted, r.RatePerMinute, r.TMCreate, r.TMExpire)
		if isDuplicate(err) {
			// A release (tombstone) committed between our read and this insert.
			return billing.ErrReservationReleased
		}
		if err != nil {
			return fmt.Errorf("insert reservation: %w", err)
		}
	}
	if r := ch.Extend; r != nil {
		res, err := tx.ExecContext(ctx, `UPDATE billing_reservations SET amount = ?, granted = ?, tm_expire = ?
			WHERE call_id = ? AND account_id = ? AND tm_release IS NULL`, r.Amount, r.Granted, r.TMExpire, mustBin(r.CallID), mustBin(r.AccountID))
		if err != nil {
			return fmt.Errorf("extend reservation: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			// A release (which does not take the account's lock) committed since our read.
			return billing.ErrReservationReleased
		}
	}
	if ch.Release != "" && callID != "" {
		if err := release(ctx, tx, callID, accountID, ch.Release, ch.At); err != nil {
			return err
		}
	}
	return s.write(ctx, tx, ch.Entries, ch.Events)
}

// release marks the call's reservation released, or writes a tombstone if the call has no row.
// accountID, when set, limits it to that account's reservation.
func release(ctx context.Context, tx *sql.Tx, callID, accountID, reason string, at time.Time) error {
	q := "UPDATE billing_reservations SET tm_release = ?, release_reason = ? WHERE call_id = ? AND tm_release IS NULL"
	args := []any{at, reason, mustBin(callID)}
	if accountID != "" {
		q += " AND (account_id = ? OR account_id IS NULL)"
		args = append(args, mustBin(accountID))
	}
	res, err := tx.ExecContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("release reservation: %w", err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		return nil
	}
	// No active row: leave a tombstone (a row that exists already stays as it is).
	_, err = tx.ExecContext(ctx, `INSERT INTO billing_reservations (call_id, account_id, tm_create, tm_expire, tm_release, release_reason)
		VALUES (?, NULL, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE call_id = call_id`, mustBin(callID), at, at, at, reason)
	if err != nil {
		return fmt.Errorf("write release tombstone: %w", err)
	}
	return nil
}

// write inserts ledger entries and adds events to the outbox.
func (s *Store) write(ctx context.Context, tx *sql.Tx, entries []billing.Entry, events []billing.Event) error {
	for _, e := range entries {
		_, err := tx.ExecContext(ctx, `INSERT INTO billing_ledger (id, account_id, customer_id, kind, call_id, amount, balance_after,
			destination_type, billable_seconds, rate_per_minute, tm_create) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			mustBin(e.ID), mustBin(e.AccountID), mustBin(e.CustomerID), e.Kind, nullBin(e.CallID), e.Amount, e.BalanceAfter,
			e.DestinationType, e.BillableSeconds, e.RatePerMinute, e.TMCreate)
		if err != nil {
			return fmt.Errorf("insert ledger entry: %w", err)
		}
	}
	for _, ev := range events {
		env, err := contract.Envelope(ev)
		if err != nil {
			return err
		}
		if err := s.outbox.Add(ctx, tx, s.exchange, env); err != nil {
			return err
		}
	}
	return nil
}

// Release marks the call's reservation released (or writes a tombstone).
func (s *Store) Release(ctx context.Context, callID, reason string, now time.Time) error {
	return s.inTx(ctx, func(tx *sql.Tx) (bool, error) {
		return false, release(ctx, tx, callID, "", reason, now)
	})
}
