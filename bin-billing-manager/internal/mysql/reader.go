package mysql

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"voipbin/bin-billing-manager/internal/billing"
)

const reservedSum = `(SELECT COALESCE(SUM(r.amount), 0) FROM billing_reservations r
	WHERE r.account_id = a.id AND r.tm_release IS NULL AND r.tm_expire > ?)`

// Account reads one account with its active reservations.
func (s *Store) Account(ctx context.Context, id string, now time.Time) (billing.Account, error) {
	key, err := bin(id)
	if err != nil {
		return billing.Account{}, billing.ErrAccountNotFound
	}
	var reserved int64
	a, err := scanAccount(s.db.QueryRowContext(ctx, "SELECT a."+strings.ReplaceAll(accountColumns, ", ", ", a.")+", "+reservedSum+
		" FROM billing_accounts a WHERE a.id = ?", now, key), &reserved)
	if errors.Is(err, sql.ErrNoRows) {
		return billing.Account{}, billing.ErrAccountNotFound
	}
	if err != nil {
		return billing.Account{}, fmt.Errorf("read account: %w", err)
	}
	a.Reserved = reserved
	return a, nil
}

// Page tokens are opaque to callers: "a" + the last account id in hex, or "l" + the last ledger
// seq, base64url-encoded.
func encodeToken(kind byte, v string) string {
	return base64.RawURLEncoding.EncodeToString(append([]byte{kind}, v...))
}

func decodeToken(kind byte, token string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(b) < 2 || b[0] != kind {
		return "", billing.ErrInvalidPageToken
	}
	return string(b[1:]), nil
}

// Accounts lists accounts in id order.
func (s *Store) Accounts(ctx context.Context, q billing.Query, now time.Time) (billing.Page[billing.Account], error) {
	where := []string{"1 = 1"}
	args := []any{now}
	if q.CustomerID != "" {
		where = append(where, "a.customer_id = ?")
		args = append(args, mustBin(q.CustomerID))
	}
	if q.PageToken != "" {
		v, err := decodeToken('a', q.PageToken)
		if err != nil {
			return billing.Page[billing.Account]{}, err
		}
		after, err := bin(v)
		if err != nil {
			return billing.Page[billing.Account]{}, billing.ErrInvalidPageToken
		}
		where = append(where, "a.id > ?")
		args = append(args, after)
	}
	args = append(args, q.PageSize+1)
	rows, err := s.db.QueryContext(ctx, "SELECT a."+strings.ReplaceAll(accountColumns, ", ", ", a.")+", "+reservedSum+
		" FROM billing_accounts a WHERE "+strings.Join(where, " AND ")+" ORDER BY a.id LIMIT ?", args...)
	if err != nil {
		return billing.Page[billing.Account]{}, fmt.Errorf("list accounts: %w", err)
	}
	defer rows.Close()
	var page billing.Page[billing.Account]
	for rows.Next() {
		var reserved int64
		a, err := scanAccount(rows, &reserved)
		if err != nil {
			return billing.Page[billing.Account]{}, fmt.Errorf("scan account: %w", err)
		}
		a.Reserved = reserved
		page.Items = append(page.Items, a)
	}
	if err := rows.Err(); err != nil {
		return billing.Page[billing.Account]{}, fmt.Errorf("list accounts: %w", err)
	}
	if len(page.Items) > q.PageSize {
		page.Items = page.Items[:q.PageSize]
		page.NextPageToken = encodeToken('a', page.Items[q.PageSize-1].ID)
	}
	return page, nil
}

// Entries lists ledger entries, newest first.
func (s *Store) Entries(ctx context.Context, q billing.Query) (billing.Page[billing.Entry], error) {
	where := []string{"1 = 1"}
	var args []any
	if q.CustomerID != "" {
		where = append(where, "customer_id = ?")
		args = append(args, mustBin(q.CustomerID))
	}
	if q.PageToken != "" {
		v, err := decodeToken('l', q.PageToken)
		if err != nil {
			return billing.Page[billing.Entry]{}, err
		}
		before, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return billing.Page[billing.Entry]{}, billing.ErrInvalidPageToken
		}
		where = append(where, "seq < ?")
		args = append(args, before)
	}
	args = append(args, q.PageSize+1)
	rows, err := s.db.QueryContext(ctx, `SELECT seq, id, account_id, customer_id, kind, call_id, amount, balance_after,
		destination_type, billable_seconds, rate_per_minute, tm_create FROM billing_ledger WHERE `+strings.Join(where, " AND ")+
		" ORDER BY seq DESC LIMIT ?", args...)
	if err != nil {
		return billing.Page[billing.Entry]{}, fmt.Errorf("list ledger: %w", err)
	}
	defer rows.Close()
	var page billing.Page[billing.Entry]
	var seqs []uint64
	for rows.Next() {
		var e billing.Entry
		var seq uint64
		var id, account, customer, call []byte
		if err := rows.Scan(&seq, &id, &account, &customer, &e.Kind, &call, &e.Amount, &e.BalanceAfter,
			&e.DestinationType, &e.BillableSeconds, &e.RatePerMinute, &e.TMCreate); err != nil {
			return billing.Page[billing.Entry]{}, fmt.Errorf("scan ledger entry: %w", err)
		}
		e.ID, e.AccountID, e.CustomerID = str(id), str(account), str(customer)
		if call != nil {
			e.CallID = str(call)
		}
		page.Items = append(page.Items, e)
		seqs = append(seqs, seq)
	}
	if err := rows.Err(); err != nil {
		return billing.Page[billing.Entry]{}, fmt.Errorf("list ledger: %w", err)
	}
	if len(page.Items) > q.PageSize {
		page.Items = page.Items[:q.PageSize]
		page.NextPageToken = encodeToken('l', strconv.FormatUint(seqs[q.PageSize-1], 10))
	}
	return page, nil
}
