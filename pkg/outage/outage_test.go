package outage_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"

	"voipbin/pkg/apierr"
	"voipbin/pkg/outage"
	"voipbin/pkg/testenv"
)

// closedPort is a loopback port with nothing listening on it.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

func TestClassify(t *testing.T) {
	typed := apierr.New(apierr.NotFound, "CALL_NOT_FOUND", "call not found")
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain error", errors.New("boom"), false},
		{"no rows", sql.ErrNoRows, false},
		{"typed error keeps its status", fmt.Errorf("get: %w", typed), false},
		{"duplicate key", &mysql.MySQLError{Number: 1062, Message: "Duplicate entry"}, false},
		{"syntax error", &mysql.MySQLError{Number: 1064}, false},
		{"deadlock", fmt.Errorf("charge: %w", &mysql.MySQLError{Number: 1213, Message: "Deadlock found"}), true},
		{"lock wait timeout", &mysql.MySQLError{Number: 1205}, true},
		{"too many connections", &mysql.MySQLError{Number: 1040}, true},
		{"server gone away", &mysql.MySQLError{Number: 2006}, true},
		{"read-only during failover", &mysql.MySQLError{Number: 1290}, true},
		{"bad connection", fmt.Errorf("insert: %w", driver.ErrBadConn), true},
		{"invalid connection", mysql.ErrInvalidConn, true},
		{"connection done", sql.ErrConnDone, true},
		{"redis pool timeout", redis.ErrPoolTimeout, true},
		{"redis client closed", redis.ErrClosed, true},
		{"redis nil is a miss", redis.Nil, false},
		{"i/o timeout", &net.OpError{Op: "read", Net: "tcp", Err: timeoutErr{}}, true},
		{"already marked", fmt.Errorf("x: %w", apierr.ErrUnavailable), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := outage.Classify(tt.err)
			if gotU := errors.Is(got, apierr.ErrUnavailable); gotU != tt.want {
				t.Fatalf("Classify(%v) unavailable = %v, want %v", tt.err, gotU, tt.want)
			}
			if tt.err != nil && !errors.Is(got, tt.err) {
				t.Errorf("Classify(%v) = %v, which no longer wraps the cause", tt.err, got)
			}
			wantStatus := apierr.Internal
			switch {
			case tt.err == nil:
				return
			case tt.want:
				wantStatus = apierr.Unavailable
			case errors.Is(tt.err, typed):
				wantStatus = apierr.NotFound
			}
			if e := apierr.From(got); e.Status != wantStatus {
				t.Errorf("apierr.From(Classify(%v)).Status = %s, want %s", tt.err, e.Status, wantStatus)
			}
		})
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// TestRealDriverErrors classifies what the real drivers return: MySQL and Redis with nothing
// listening (connection refused), and a real InnoDB deadlock on the machine's MariaDB.
func TestRealDriverErrors(t *testing.T) {
	t.Run("mysql refused", func(t *testing.T) {
		cfg := mysql.NewConfig()
		cfg.User, cfg.Net, cfg.Addr, cfg.Timeout = "root", "tcp", closedPort(t), time.Second
		db, err := sql.Open("mysql", cfg.FormatDSN())
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		_, err = db.ExecContext(context.Background(), "SELECT 1")
		if err == nil || !outage.Unavailable(err) {
			t.Fatalf("SELECT on a closed port: %v, want unavailable", err)
		}
	})
	t.Run("redis refused", func(t *testing.T) {
		rdb := redis.NewClient(&redis.Options{Addr: closedPort(t), MaxRetries: -1, DialTimeout: time.Second})
		defer rdb.Close()
		err := rdb.Get(context.Background(), "k").Err()
		if err == nil || !outage.Unavailable(err) {
			t.Fatalf("GET on a closed port: %v, want unavailable", err)
		}
	})
	t.Run("mysql deadlock", func(t *testing.T) {
		db := testenv.MySQL(t)
		ctx := context.Background()
		if _, err := db.ExecContext(ctx, "CREATE TABLE d (id INT PRIMARY KEY, v INT) ENGINE=InnoDB"); err != nil {
			t.Fatal(err)
		}
		if _, err := db.ExecContext(ctx, "INSERT INTO d VALUES (1,0),(2,0)"); err != nil {
			t.Fatal(err)
		}
		// Two transactions lock rows 1 and 2 in opposite orders; InnoDB rolls one back.
		var wg sync.WaitGroup
		errs := make([]error, 2)
		locked := make(chan struct{}, 2)
		both := make(chan struct{})
		for i, order := range [][2]int{{1, 2}, {2, 1}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					errs[i] = err
					locked <- struct{}{}
					return
				}
				defer tx.Rollback()
				_, err = tx.ExecContext(ctx, "UPDATE d SET v = v + 1 WHERE id = ?", order[0])
				locked <- struct{}{}
				if err != nil {
					errs[i] = err
					return
				}
				<-both
				_, errs[i] = tx.ExecContext(ctx, "UPDATE d SET v = v + 1 WHERE id = ?", order[1])
				if errs[i] == nil {
					errs[i] = tx.Commit()
				}
			}()
		}
		<-locked
		<-locked
		close(both)
		wg.Wait()
		var deadlocked error
		for _, err := range errs {
			if err != nil {
				deadlocked = err
			}
		}
		var my *mysql.MySQLError
		if !errors.As(deadlocked, &my) || my.Number != 1213 {
			t.Fatalf("want one transaction to deadlock (1213), got %v", errs)
		}
		if e := apierr.From(outage.Classify(fmt.Errorf("update: %w", deadlocked))); e.Status != apierr.Unavailable || e.Reason != apierr.ReasonServiceUnavailable {
			t.Errorf("a deadlock answers %s/%s, want UNAVAILABLE/SERVICE_UNAVAILABLE", e.Status, e.Reason)
		}
	})
}
