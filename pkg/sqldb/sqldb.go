// Package sqldb opens the MySQL connection pool of a service and tells whether it is usable.
package sqldb

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"time"

	_ "github.com/go-sql-driver/mysql" // the driver every service uses
)

// Open opens a pool on dsn and waits, retrying, until the server answers or ctx ends.
func Open(ctx context.Context, dsn string, log *slog.Logger) (*sql.DB, error) {
	db, err := sql.Open("mysql", dsn)
	if err != nil {
		return nil, fmt.Errorf("open mysql: %w", err)
	}
	db.SetMaxOpenConns(50)
	db.SetMaxIdleConns(50)
	db.SetConnMaxLifetime(30 * time.Minute)
	for attempt := 1; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = db.PingContext(pctx)
		cancel()
		if err == nil {
			return db, nil
		}
		log.Warn("mysql not reachable yet, retrying", "attempt", attempt, "error", err)
		select {
		case <-ctx.Done():
			_ = db.Close()
			return nil, fmt.Errorf("connect mysql: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(time.Duration(min(attempt, 10)) * 200 * time.Millisecond):
		}
	}
}

// Check pings db, for /readyz.
func Check(db *sql.DB) func(ctx context.Context) error {
	return func(ctx context.Context) error { return db.PingContext(ctx) }
}
