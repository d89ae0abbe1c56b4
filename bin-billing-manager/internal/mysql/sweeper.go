package mysql

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"voipbin/bin-billing-manager/internal/billing"
	"voipbin/pkg/telemetry"
)

// SweeperOptions tune a Sweeper.
type SweeperOptions struct {
	// Interval between sweeps (default 1 min).
	Interval time.Duration
	// Retention keeps released reservations (tombstones) this long (default 7 days), so a late
	// gate request for an ended call still finds its call released.
	Retention time.Duration
	// Batch bounds the rows one sweep touches (default 1000).
	Batch      int
	Registerer prometheus.Registerer
	// Clock defaults to time.Now.
	Clock func() time.Time
}

// Sweeper marks reservations whose call.ended never came as expired, so an operator sees them
// (the gate already ignores them once tm_expire passes: correctness never waits for a sweep), and
// purges released reservations after the retention period.
type Sweeper struct {
	db      *sql.DB
	log     *slog.Logger
	opts    SweeperOptions
	now     func() time.Time
	expired prometheus.Counter
}

// NewSweeper makes a sweeper over db.
func NewSweeper(db *sql.DB, log *slog.Logger, opts SweeperOptions) *Sweeper {
	if opts.Interval <= 0 {
		opts.Interval = time.Minute
	}
	if opts.Retention <= 0 {
		opts.Retention = 7 * 24 * time.Hour
	}
	if opts.Batch <= 0 {
		opts.Batch = 1000
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	s := &Sweeper{db: db, log: log, opts: opts, now: opts.Clock,
		expired: prometheus.NewCounter(prometheus.CounterOpts{Name: "billing_reservations_expired_total",
			Help: "Reservations that expired without their call.ended (the call's charge may be missing)."})}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(s.expired)
	}
	return s
}

// Run sweeps every Interval until ctx ends.
func (s *Sweeper) Run(ctx context.Context) error {
	t := time.NewTicker(s.opts.Interval)
	defer t.Stop()
	for {
		if _, _, err := s.Sweep(ctx); err != nil && ctx.Err() == nil {
			s.log.WarnContext(ctx, "reservation sweep failed, will retry", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Sweep makes one pass and says how many reservations it expired and purged.
func (s *Sweeper) Sweep(ctx context.Context) (expired, purged int, err error) {
	now := s.now().UTC()
	expired, err = s.expire(ctx, now)
	if err != nil {
		return 0, 0, err
	}
	res, err := s.db.ExecContext(ctx, "DELETE FROM billing_reservations WHERE tm_release IS NOT NULL AND tm_release < ? LIMIT ?",
		now.Add(-s.opts.Retention), s.opts.Batch)
	if err != nil {
		return expired, 0, fmt.Errorf("purge released reservations: %w", err)
	}
	n, _ := res.RowsAffected()
	return expired, int(n), nil
}

func (s *Sweeper) expire(ctx context.Context, now time.Time) (int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT call_id, account_id, amount, tm_expire FROM billing_reservations
		WHERE tm_release IS NULL AND tm_expire <= ? ORDER BY call_id LIMIT ?`, now, s.opts.Batch)
	if err != nil {
		return 0, fmt.Errorf("find expired reservations: %w", err)
	}
	type expiredRow struct {
		call, account []byte
		amount        int64
		expire        time.Time
	}
	var found []expiredRow
	for rows.Next() {
		var r expiredRow
		if err := rows.Scan(&r.call, &r.account, &r.amount, &r.expire); err != nil {
			rows.Close()
			return 0, fmt.Errorf("scan expired reservation: %w", err)
		}
		found = append(found, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("find expired reservations: %w", err)
	}
	if len(found) == 0 {
		return 0, nil
	}
	args := []any{now, billing.ReleaseExpired}
	for _, r := range found {
		args = append(args, r.call)
	}
	// tm_release IS NULL again: a charge that committed since the SELECT keeps its own reason.
	res, err := s.db.ExecContext(ctx, "UPDATE billing_reservations SET tm_release = ?, release_reason = ? WHERE tm_release IS NULL AND call_id IN (?"+
		strings.Repeat(", ?", len(found)-1)+")", args...)
	if err != nil {
		return 0, fmt.Errorf("expire reservations: %w", err)
	}
	n, _ := res.RowsAffected()
	s.expired.Add(float64(n))
	for _, r := range found {
		lctx := telemetry.WithCallID(ctx, str(r.call))
		s.log.WarnContext(lctx, "reservation expired without call.ended; the call may be unbilled",
			"account_id", str(r.account), "amount", r.amount, "tm_expire", r.expire)
	}
	return int(n), nil
}
