// Package migrate applies a service's embedded SQL migrations with goose. Every service shares one
// database, so each keeps its own version table (<service>_goose_db_version), and every run holds
// a MySQL advisory lock (GET_LOCK) named for the service, so instances starting together apply
// each migration once.
package migrate

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/pressly/goose/v3"

	"voipbin/pkg/sqldb"
)

// Up applies every pending migration of service found in fsys (files like 00001_init.sql at its
// root) and returns how many ran.
func Up(ctx context.Context, db *sql.DB, fsys fs.FS, service string, log *slog.Logger) (int, error) {
	p, err := goose.NewProvider(goose.DialectMySQL, db, fsys,
		goose.WithTableName(service+"_goose_db_version"),
		goose.WithSessionLocker(advisoryLock("voipbin_migrate_"+service)),
		goose.WithDisableGlobalRegistry(true),
	)
	if err != nil {
		return 0, fmt.Errorf("migrations of %s: %w", service, err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrate %s: %w", service, err)
	}
	for _, r := range results {
		log.Info("migration applied", "service", service, "version", r.Source.Version, "file", r.Source.Path, "took", r.Duration)
	}
	return len(results), nil
}

// advisoryLock is a goose session locker on MySQL's GET_LOCK.
type advisoryLock string

func (l advisoryLock) SessionLock(ctx context.Context, conn *sql.Conn) error {
	var got sql.NullInt64
	// GET_LOCK waits up to its timeout; a NULL or 0 means another instance held it all along.
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 60)", string(l)).Scan(&got); err != nil {
		return fmt.Errorf("get migration lock: %w", err)
	}
	if !got.Valid || got.Int64 != 1 {
		return errors.New("migration lock " + string(l) + " is held by another instance")
	}
	return nil
}

func (l advisoryLock) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	_, err := conn.ExecContext(ctx, "SELECT RELEASE_LOCK(?)", string(l))
	return err
}

// Open opens the service's MySQL pool (waiting for the server until ctx ends) and applies its
// pending migrations.
func Open(ctx context.Context, dsn string, fsys fs.FS, service string, log *slog.Logger) (*sql.DB, error) {
	db, err := sqldb.Open(ctx, dsn, log)
	if err != nil {
		return nil, err
	}
	if _, err := Up(ctx, db, fsys, service, log); err != nil {
		_ = db.Close()
		return nil, err
	}
	return db, nil
}
