// Package mysql stores the api manager's identity data (customers, users, access keys) in MySQL
// tables prefixed customer_, and writes customer events to the customer_outbox in the same
// transaction as the change they announce.
package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/google/uuid"

	"voipbin/bin-api-manager/internal/identity"
	"voipbin/pkg/customerapi"
	"voipbin/pkg/event"
)

// OutboxTable is the api manager's outbox.
const OutboxTable = "customer_outbox"

// Store implements identity.UserStore, identity.CustomerStore and identity.AccessKeyStore.
type Store struct {
	db     *sql.DB
	outbox *event.Outbox
	// committed is called after a transaction that added outbox events commits (the relay's Kick).
	committed func()
}

// NewStore makes a store on db; committed (may be nil) is called after events are committed.
func NewStore(db *sql.DB, committed func()) *Store {
	if committed == nil {
		committed = func() {}
	}
	return &Store{db: db, outbox: event.NewOutbox(OutboxTable), committed: committed}
}

func uid(s string) ([]byte, error) {
	u, err := uuid.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("bad uuid %q: %w", s, err)
	}
	return u[:], nil
}

// nullUID is NULL for an empty id (a superadmin's customer).
func nullUID(s string) (any, error) {
	if s == "" {
		return nil, nil
	}
	return uid(s)
}

func str(b []byte) string {
	if len(b) != 16 {
		return ""
	}
	u, _ := uuid.FromBytes(b)
	return u.String()
}

func isDuplicate(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1062
}

// ---- users ------------------------------------------------------------------------------------

const userColumns = "id, customer_id, username, password_hash, permission, tm_create, tm_update"

func scanUser(row interface{ Scan(...any) error }) (identity.User, error) {
	var u identity.User
	var id, cid []byte
	if err := row.Scan(&id, &cid, &u.Username, &u.PasswordHash, &u.Permission, &u.TMCreate, &u.TMUpdate); err != nil {
		return identity.User{}, err
	}
	u.ID, u.CustomerID = str(id), str(cid)
	return u, nil
}

func (s *Store) userWhere(ctx context.Context, where string, arg any) (identity.User, error) {
	u, err := scanUser(s.db.QueryRowContext(ctx, "SELECT "+userColumns+" FROM customer_users WHERE "+where+" AND tm_delete IS NULL", arg))
	if errors.Is(err, sql.ErrNoRows) {
		return identity.User{}, identity.ErrUserNotFound
	}
	if err != nil {
		return identity.User{}, fmt.Errorf("select user: %w", err)
	}
	return u, nil
}

// UserByUsername reads a user by username.
func (s *Store) UserByUsername(ctx context.Context, username string) (identity.User, error) {
	return s.userWhere(ctx, "username = ?", username)
}

// UserByID reads a user by id.
func (s *Store) UserByID(ctx context.Context, id string) (identity.User, error) {
	b, err := uid(id)
	if err != nil {
		return identity.User{}, identity.ErrUserNotFound
	}
	return s.userWhere(ctx, "id = ?", b)
}

// HasSuperadmin reports whether a superadmin user exists.
func (s *Store) HasSuperadmin(ctx context.Context) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM customer_users WHERE permission & ? <> 0 AND tm_delete IS NULL",
		uint32(identity.PermSuperadmin)).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("count superadmins: %w", err)
	}
	return n > 0, nil
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func insertUser(ctx context.Context, x execer, u identity.User) error {
	id, err := uid(u.ID)
	if err != nil {
		return err
	}
	cid, err := nullUID(u.CustomerID)
	if err != nil {
		return err
	}
	_, err = x.ExecContext(ctx, "INSERT INTO customer_users ("+userColumns+") VALUES (?, ?, ?, ?, ?, ?, ?)",
		id, cid, u.Username, u.PasswordHash, uint32(u.Permission), u.TMCreate, u.TMUpdate)
	if isDuplicate(err) {
		return identity.ErrUsernameTaken
	}
	if err != nil {
		return fmt.Errorf("insert user: %w", err)
	}
	return nil
}

// CreateUser inserts a user.
func (s *Store) CreateUser(ctx context.Context, u identity.User) error {
	return insertUser(ctx, s.db, u)
}

// Users lists a customer's live users ("" is the superadmins), or every user, newest first.
func (s *Store) Users(ctx context.Context, customerID string, all bool) ([]identity.User, error) {
	q := "SELECT " + userColumns + " FROM customer_users WHERE tm_delete IS NULL"
	var args []any
	switch {
	case all:
	case customerID == "":
		q += " AND customer_id IS NULL"
	default:
		b, err := uid(customerID)
		if err != nil {
			return []identity.User{}, nil
		}
		q += " AND customer_id = ?"
		args = append(args, b)
	}
	rows, err := s.db.QueryContext(ctx, q+" ORDER BY tm_create DESC, id DESC LIMIT 1000", args...)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	defer rows.Close()
	out := []identity.User{}
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, fmt.Errorf("scan user: %w", err)
		}
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	return out, nil
}

// SetUserPermission changes a live user's permission.
func (s *Store) SetUserPermission(ctx context.Context, id string, p identity.Permission, now time.Time) error {
	b, err := uid(id)
	if err != nil {
		return identity.ErrUserNotFound
	}
	res, err := s.db.ExecContext(ctx, "UPDATE customer_users SET permission = ?, tm_update = ? WHERE id = ? AND tm_delete IS NULL",
		uint32(p), now, b)
	if err != nil {
		return fmt.Errorf("update user permission: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		// Zero rows also when the permission is unchanged: tell the two apart.
		if _, err := s.UserByID(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// DeleteUser soft-deletes a live user and its live access keys in one transaction.
func (s *Store) DeleteUser(ctx context.Context, id string, now time.Time) ([]identity.AccessKey, error) {
	b, err := uid(id)
	if err != nil {
		return nil, identity.ErrUserNotFound
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	res, err := tx.ExecContext(ctx, "UPDATE customer_users SET tm_delete = ?, tm_update = ? WHERE id = ? AND tm_delete IS NULL", now, now, b)
	if err != nil {
		return nil, fmt.Errorf("delete user: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return nil, identity.ErrUserNotFound
	}
	keys, err := selectKeys(ctx, tx, "user_id = ? AND tm_delete IS NULL FOR UPDATE", b)
	if err != nil {
		return nil, err
	}
	if _, err := tx.ExecContext(ctx, "UPDATE customer_accesskeys SET tm_delete = ? WHERE user_id = ? AND tm_delete IS NULL", now, b); err != nil {
		return nil, fmt.Errorf("delete the user's access keys: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit user deletion: %w", err)
	}
	return keys, nil
}

// ---- customers --------------------------------------------------------------------------------

const customerColumns = "id, name, email, tm_create, tm_update"

func scanCustomer(row interface{ Scan(...any) error }) (identity.Customer, error) {
	var c identity.Customer
	var id []byte
	if err := row.Scan(&id, &c.Name, &c.Email, &c.TMCreate, &c.TMUpdate); err != nil {
		return identity.Customer{}, err
	}
	c.ID = str(id)
	return c, nil
}

// CreateCustomer inserts the customer, its admin user and the customer.created event in one
// transaction.
func (s *Store) CreateCustomer(ctx context.Context, c identity.Customer, admin identity.User) error {
	id, err := uid(c.ID)
	if err != nil {
		return err
	}
	ev, err := event.New(customerapi.EventCreated, c.ID, "customer", c.ID, 1, c.API())
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, "INSERT INTO customer_customers ("+customerColumns+") VALUES (?, ?, ?, ?, ?)",
		id, c.Name, c.Email, c.TMCreate, c.TMUpdate); err != nil {
		return fmt.Errorf("insert customer: %w", err)
	}
	if err := insertUser(ctx, tx, admin); err != nil {
		return err
	}
	if err := s.outbox.Add(ctx, tx, event.ExchangeCustomer, ev); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit customer: %w", err)
	}
	s.committed()
	return nil
}

// Customer reads one customer.
func (s *Store) Customer(ctx context.Context, id string) (identity.Customer, error) {
	b, err := uid(id)
	if err != nil {
		return identity.Customer{}, identity.ErrCustomerNotFound
	}
	c, err := scanCustomer(s.db.QueryRowContext(ctx, "SELECT "+customerColumns+" FROM customer_customers WHERE id = ? AND tm_delete IS NULL", b))
	if errors.Is(err, sql.ErrNoRows) {
		return identity.Customer{}, identity.ErrCustomerNotFound
	}
	if err != nil {
		return identity.Customer{}, fmt.Errorf("select customer: %w", err)
	}
	return c, nil
}

// Customers lists customers newest first, strictly after the cursor.
func (s *Store) Customers(ctx context.Context, after identity.Cursor, limit int) ([]identity.Customer, error) {
	q := "SELECT " + customerColumns + " FROM customer_customers WHERE tm_delete IS NULL"
	args := []any{}
	if !after.IsZero() {
		b, err := uid(after.ID)
		if err != nil {
			return nil, err
		}
		q += " AND (tm_create < ? OR (tm_create = ? AND id < ?))"
		args = append(args, after.TMCreate, after.TMCreate, b)
	}
	q += " ORDER BY tm_create DESC, id DESC LIMIT ?"
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list customers: %w", err)
	}
	defer rows.Close()
	out := []identity.Customer{}
	for rows.Next() {
		c, err := scanCustomer(rows)
		if err != nil {
			return nil, fmt.Errorf("scan customer: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list customers: %w", err)
	}
	return out, nil
}

// ---- access keys ------------------------------------------------------------------------------

const keyColumns = "id, customer_id, user_id, parent_key_id, name, token_hash, permission, tm_expire, tm_create"

func scanKey(row interface{ Scan(...any) error }) (identity.AccessKey, error) {
	var k identity.AccessKey
	var id, cid, user, parent, hash []byte
	if err := row.Scan(&id, &cid, &user, &parent, &k.Name, &hash, &k.Permission, &k.TMExpire, &k.TMCreate); err != nil {
		return identity.AccessKey{}, err
	}
	k.ID, k.CustomerID, k.UserID, k.ParentKeyID = str(id), str(cid), str(user), str(parent)
	copy(k.TokenHash[:], hash)
	return k, nil
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// selectKeys reads the keys matching where (which may end with FOR UPDATE).
func selectKeys(ctx context.Context, q querier, where string, args ...any) ([]identity.AccessKey, error) {
	rows, err := q.QueryContext(ctx, "SELECT "+keyColumns+" FROM customer_accesskeys WHERE "+where, args...)
	if err != nil {
		return nil, fmt.Errorf("select access keys: %w", err)
	}
	defer rows.Close()
	out := []identity.AccessKey{}
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, fmt.Errorf("scan access key: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("select access keys: %w", err)
	}
	return out, nil
}

// CreateAccessKey inserts a key (its hash only). A key with a parent is inserted in a
// transaction that first locks the live parent row, so it cannot race the parent's deletion
// (which locks the same row): either the deletion sees the new key and deletes it too, or the
// insertion sees the parent gone and fails with ErrAccessKeyNotFound.
func (s *Store) CreateAccessKey(ctx context.Context, k identity.AccessKey) error {
	id, err := uid(k.ID)
	if err != nil {
		return err
	}
	user, err := uid(k.UserID)
	if err != nil {
		return err
	}
	cid, err := nullUID(k.CustomerID)
	if err != nil {
		return err
	}
	parent, err := nullUID(k.ParentKeyID)
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if parent != nil {
		var one int
		err := tx.QueryRowContext(ctx, "SELECT 1 FROM customer_accesskeys WHERE id = ? AND tm_delete IS NULL FOR UPDATE", parent).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return identity.ErrAccessKeyNotFound
		}
		if err != nil {
			return fmt.Errorf("lock parent access key: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO customer_accesskeys ("+keyColumns+") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
		id, cid, user, parent, k.Name, k.TokenHash[:], uint32(k.Permission), k.TMExpire, k.TMCreate); err != nil {
		return fmt.Errorf("insert access key: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit access key: %w", err)
	}
	return nil
}

func (s *Store) keyWhere(ctx context.Context, where string, arg any) (identity.AccessKey, error) {
	k, err := scanKey(s.db.QueryRowContext(ctx, "SELECT "+keyColumns+" FROM customer_accesskeys WHERE "+where+" AND tm_delete IS NULL", arg))
	if errors.Is(err, sql.ErrNoRows) {
		return identity.AccessKey{}, identity.ErrAccessKeyNotFound
	}
	if err != nil {
		return identity.AccessKey{}, fmt.Errorf("select access key: %w", err)
	}
	return k, nil
}

// AccessKeyByHash finds a live key by the hash of its token.
func (s *Store) AccessKeyByHash(ctx context.Context, hash [32]byte) (identity.AccessKey, error) {
	return s.keyWhere(ctx, "token_hash = ?", hash[:])
}

// AccessKey reads a live key by id.
func (s *Store) AccessKey(ctx context.Context, id string) (identity.AccessKey, error) {
	b, err := uid(id)
	if err != nil {
		return identity.AccessKey{}, identity.ErrAccessKeyNotFound
	}
	return s.keyWhere(ctx, "id = ?", b)
}

// AccessKeys lists a customer's live keys ("" is the superadmins' own keys), or every key.
func (s *Store) AccessKeys(ctx context.Context, customerID string, all bool) ([]identity.AccessKey, error) {
	where := "tm_delete IS NULL"
	var args []any
	switch {
	case all:
	case customerID == "":
		where += " AND customer_id IS NULL"
	default:
		b, err := uid(customerID)
		if err != nil {
			return []identity.AccessKey{}, nil
		}
		where += " AND customer_id = ?"
		args = append(args, b)
	}
	keys, err := selectKeys(ctx, s.db, where+" ORDER BY tm_create DESC, id DESC LIMIT 1000", args...)
	if err != nil {
		return nil, fmt.Errorf("list access keys: %w", err)
	}
	return keys, nil
}

// maxKeyDepth bounds the descent through keys created by keys (a chain longer than this cannot
// be made in practice: each level takes a request with the level above).
const maxKeyDepth = 100

// DeleteAccessKey soft-deletes a live key and its live descendants in one transaction, locking
// each level before reading the next (see CreateAccessKey), and returns them, the key first.
func (s *Store) DeleteAccessKey(ctx context.Context, id string, now time.Time) ([]identity.AccessKey, error) {
	b, err := uid(id)
	if err != nil {
		return nil, identity.ErrAccessKeyNotFound
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	gone, err := selectKeys(ctx, tx, "id = ? AND tm_delete IS NULL FOR UPDATE", b)
	if err != nil {
		return nil, err
	}
	if len(gone) == 0 {
		return nil, identity.ErrAccessKeyNotFound
	}
	level := [][]byte{b}
	for depth := 0; len(level) > 0 && depth < maxKeyDepth; depth++ {
		ph := strings.TrimSuffix(strings.Repeat("?, ", len(level)), ", ")
		args := make([]any, len(level))
		for i, x := range level {
			args[i] = x
		}
		children, err := selectKeys(ctx, tx, "parent_key_id IN ("+ph+") AND tm_delete IS NULL FOR UPDATE", args...)
		if err != nil {
			return nil, err
		}
		level = level[:0:0]
		for _, c := range children {
			cb, _ := uid(c.ID)
			level = append(level, cb)
		}
		gone = append(gone, children...)
	}
	for _, k := range gone {
		kb, _ := uid(k.ID)
		if _, err := tx.ExecContext(ctx, "UPDATE customer_accesskeys SET tm_delete = ? WHERE id = ?", now, kb); err != nil {
			return nil, fmt.Errorf("delete access key: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("commit access key deletion: %w", err)
	}
	return gone, nil
}
