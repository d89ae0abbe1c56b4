package event

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"voipbin/pkg/amqp"
)

// OutboxDDL is the outbox table every producing service creates in its migrations, with its own
// table name (call_outbox, billing_outbox, …). Copy it verbatim; the relay depends on its columns.
const OutboxDDL = `CREATE TABLE <table> (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  event_id    BINARY(16) NOT NULL,
  exchange    VARCHAR(255) NOT NULL,
  routing_key VARCHAR(255) NOT NULL,
  payload     MEDIUMBLOB NOT NULL,
  tm_create   DATETIME(6) NOT NULL,
  tm_sent     DATETIME(6) NULL,
  UNIQUE KEY uq_<table>_event (event_id),
  KEY idx_<table>_pending (tm_sent, id)
)`

var tableName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)

// Outbox writes events into one outbox table.
type Outbox struct{ table string }

// NewOutbox is the outbox in table (e.g. "call_outbox").
func NewOutbox(table string) *Outbox {
	if !tableName.MatchString(table) {
		panic(fmt.Sprintf("event: bad outbox table name %q", table))
	}
	return &Outbox{table: table}
}

// Execer is what Add needs of the caller's transaction (*sql.Tx).
type Execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Add records ev for publishing to exchange, inside the caller's transaction: it is published if
// and only if the transaction commits.
func (o *Outbox) Add(ctx context.Context, tx Execer, exchange string, ev Event) error {
	id, err := uuid.Parse(ev.EventID)
	if err != nil {
		return fmt.Errorf("outbox: event id %q: %w", ev.EventID, err)
	}
	payload, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("outbox: marshal %s: %w", ev.EventType, err)
	}
	_, err = tx.ExecContext(ctx, "INSERT INTO "+o.table+" (event_id, exchange, routing_key, payload, tm_create) VALUES (?, ?, ?, ?, ?)",
		id[:], exchange, RoutingKey(ev.CustomerID, ev.EventType), payload, time.Now().UTC())
	if err != nil {
		return fmt.Errorf("outbox: insert %s: %w", ev.EventType, err)
	}
	return nil
}

// Publisher is what the relay needs of amqp.Conn.
type Publisher interface {
	PublishBatch(ctx context.Context, msgs []amqp.Message) error
}

// RelayOptions tune a Relay.
type RelayOptions struct {
	Interval   time.Duration // poll period when not kicked (default 200 ms)
	Batch      int           // rows per pass (default 200)
	Retention  time.Duration // sent rows are deleted after this (default 24 h)
	Registerer prometheus.Registerer
}

// Relay publishes pending outbox rows.
type Relay struct {
	db    *sql.DB
	pub   Publisher
	table string
	log   *slog.Logger
	opts  RelayOptions
	kick  chan struct{}

	published prometheus.Counter
	failures  prometheus.Counter
	pending   prometheus.Gauge
	oldest    prometheus.Gauge
}

// NewRelay makes a relay for table.
func NewRelay(db *sql.DB, pub Publisher, table string, log *slog.Logger, opts RelayOptions) *Relay {
	if !tableName.MatchString(table) {
		panic(fmt.Sprintf("event: bad outbox table name %q", table))
	}
	if opts.Interval <= 0 {
		opts.Interval = 200 * time.Millisecond
	}
	if opts.Batch <= 0 {
		opts.Batch = 200
	}
	if opts.Retention <= 0 {
		opts.Retention = 24 * time.Hour
	}
	labels := prometheus.Labels{"table": table}
	r := &Relay{db: db, pub: pub, table: table, log: log.With("outbox", table), opts: opts, kick: make(chan struct{}, 1),
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "outbox_published_total", Help: "Outbox events published.", ConstLabels: labels}),
		failures:  prometheus.NewCounter(prometheus.CounterOpts{Name: "outbox_publish_failures_total", Help: "Relay passes that failed and will be retried.", ConstLabels: labels}),
		pending:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "outbox_pending", Help: "Outbox rows not yet published.", ConstLabels: labels}),
		oldest:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "outbox_oldest_pending_seconds", Help: "Age of the oldest unpublished row.", ConstLabels: labels}),
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(r.published, r.failures, r.pending, r.oldest)
	}
	return r
}

// Kick asks for a pass now (call it after committing a transaction that added events).
func (r *Relay) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run relays until ctx ends, then makes one last pass so events committed before shutdown leave.
func (r *Relay) Run(ctx context.Context) error {
	tick := time.NewTicker(r.opts.Interval)
	defer tick.Stop()
	cleanup := time.NewTicker(time.Minute)
	defer cleanup.Stop()
	failures := 0
	for {
		n, err := r.Flush(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			failures++
			r.failures.Inc()
			r.log.Warn("outbox relay pass failed, will retry", "error", err, "consecutive_failures", failures)
		case err == nil:
			failures = 0
		}
		if n == r.opts.Batch && err == nil {
			continue // more waiting
		}
		wait := r.opts.Interval
		if failures > 0 {
			wait = min(time.Duration(failures)*r.opts.Interval*2, 5*time.Second)
		}
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_, err := r.Flush(fctx)
			cancel()
			if err != nil {
				r.log.Warn("final outbox pass failed; rows stay pending for the next start", "error", err)
			}
			return nil
		case <-r.kick:
		case <-tick.C:
		case <-cleanup.C:
			r.cleanup(ctx)
		case <-time.After(wait):
		}
	}
}

// Flush makes one pass: claim up to Batch pending rows, publish them with confirms, mark them sent.
// It returns how many rows it published.
func (r *Relay) Flush(ctx context.Context) (int, error) {
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	rows, err := tx.QueryContext(ctx, "SELECT id, exchange, routing_key, payload, tm_create FROM "+r.table+
		" WHERE tm_sent IS NULL ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED", r.opts.Batch)
	if err != nil {
		return 0, fmt.Errorf("claim pending: %w", err)
	}
	var ids []any
	var msgs []amqp.Message
	var oldest time.Time
	for rows.Next() {
		var id uint64
		var m amqp.Message
		var payload []byte
		var created time.Time
		if err := rows.Scan(&id, &m.Exchange, &m.Key, &payload, &created); err != nil {
			rows.Close()
			return 0, fmt.Errorf("scan: %w", err)
		}
		if oldest.IsZero() {
			oldest = created
		}
		var head struct {
			EventID string `json:"event_id"`
		}
		_ = json.Unmarshal(payload, &head)
		m.Publishing = amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent,
			MessageId: head.EventID, Timestamp: created, Body: payload}
		ids = append(ids, id)
		msgs = append(msgs, m)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("claim pending: %w", err)
	}
	rows.Close()
	if len(msgs) == 0 {
		r.pending.Set(0)
		r.oldest.Set(0)
		return 0, nil
	}
	r.oldest.Set(time.Since(oldest).Seconds())
	if err := r.pub.PublishBatch(ctx, msgs); err != nil {
		return 0, fmt.Errorf("publish %d events: %w", len(msgs), err)
	}
	q := "UPDATE " + r.table + " SET tm_sent = ? WHERE id IN (?" + strings.Repeat(",?", len(ids)-1) + ")"
	if _, err := tx.ExecContext(ctx, q, append([]any{time.Now().UTC()}, ids...)...); err != nil {
		return 0, fmt.Errorf("mark sent: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	r.published.Add(float64(len(msgs)))
	if len(msgs) < r.opts.Batch {
		r.pending.Set(0)
		r.oldest.Set(0)
	}
	return len(msgs), nil
}

func (r *Relay) cleanup(ctx context.Context) {
	_, err := r.db.ExecContext(ctx, "DELETE FROM "+r.table+" WHERE tm_sent IS NOT NULL AND tm_sent < ? LIMIT 10000",
		time.Now().UTC().Add(-r.opts.Retention))
	if err != nil && ctx.Err() == nil {
		r.log.Warn("outbox cleanup failed", "error", err)
	}
}
