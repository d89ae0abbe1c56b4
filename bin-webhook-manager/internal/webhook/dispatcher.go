package webhook

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"voipbin/pkg/telemetry"
)

// Claim is a delivery leased to one dispatcher, with what sending it needs.
type Claim struct {
	Delivery
	Webhook        Webhook
	Token          string    // proves the lease when recording
	WindowStart    time.Time // start of the retry window
	WindowAttempts int       // attempts made in the window before this one
}

// Queue is the store of due deliveries. Several dispatchers (in several processes) may share it.
type Queue interface {
	// Claim leases up to limit due deliveries of enabled webhooks for lease, taking only the head
	// of each (webhook, resource) chain: a delivery is not claimed while an earlier-sequence
	// delivery of the same resource to the same webhook is pending.
	Claim(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]Claim, error)
	// Record saves attempts and the decisions that follow them in one transaction, and disables
	// a webhook when a decision says so. If a lease was lost meanwhile, only its attempt is saved.
	Record(ctx context.Context, rs []Recorded) error
	// Backlog counts pending deliveries of enabled webhooks and gives the oldest one's creation.
	Backlog(ctx context.Context) (n int, oldest time.Time, err error)
}

// Recorded is one attempt of a claimed delivery and what follows it.
type Recorded struct {
	Claim    Claim
	Attempt  Attempt
	Decision Decision
}

// Request is one HTTP request of a delivery.
type Request struct {
	Method string
	URI    string
	Header map[string]string
	Body   []byte
}

// Sender sends one request within ctx (which carries the attempt timeout).
type Sender interface {
	Send(ctx context.Context, r Request) Result
}

// DispatcherOptions tune a Dispatcher.
type DispatcherOptions struct {
	Workers    int           // attempts in flight at once (default 16)
	Interval   time.Duration // poll period when not kicked (default 500 ms)
	Timeout    time.Duration // one attempt's limit (default 10 s)
	Policy     Policy
	Registerer prometheus.Registerer
}

// Dispatcher sends due deliveries and records every attempt.
type Dispatcher struct {
	queue  Queue
	sender Sender
	log    *slog.Logger
	opts   DispatcherOptions
	kick   chan struct{}
	now    func() time.Time

	attempts      *prometheus.CounterVec
	finished      *prometheus.CounterVec
	latency       prometheus.Histogram
	firstDelay    prometheus.Histogram
	backlog       prometheus.Gauge
	backlogOldest prometheus.Gauge
	errors        prometheus.Counter
}

// NewDispatcher makes a dispatcher; Run starts it.
func NewDispatcher(queue Queue, sender Sender, log *slog.Logger, opts DispatcherOptions) *Dispatcher {
	if opts.Workers <= 0 {
		opts.Workers = 16
	}
	if opts.Interval <= 0 {
		opts.Interval = 500 * time.Millisecond
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	opts.Policy = opts.Policy.WithDefaults()
	latencyBuckets := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	d := &Dispatcher{queue: queue, sender: sender, log: log, opts: opts, kick: make(chan struct{}, 1),
		now: func() time.Time { return time.Now().UTC() },
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "webhook_delivery_attempts_total",
			Help: "Delivery attempts by result: succeeded, retry (network error, 408, 429, 5xx), failed, gone (410)."}, []string{"result"}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "webhook_deliveries_finished_total",
			Help: "Deliveries that reached a final status (succeeded or failed)."}, []string{"status"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "webhook_delivery_attempt_seconds",
			Help: "Latency of one delivery attempt, to the answer's headers or the failure.", Buckets: latencyBuckets}),
		firstDelay: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "webhook_delivery_first_attempt_delay_seconds",
			Help: "From the event's timestamp to the start of its first attempt.", Buckets: latencyBuckets}),
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{Name: "webhook_delivery_backlog",
			Help: "Pending deliveries of enabled webhooks."}),
		backlogOldest: prometheus.NewGauge(prometheus.GaugeOpts{Name: "webhook_delivery_backlog_oldest_seconds",
			Help: "Age of the oldest pending delivery of an enabled webhook."}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "webhook_dispatch_errors_total",
			Help: "Claims and records that failed on the database (the delivery is tried again later)."}),
	}
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(d.attempts, d.finished, d.latency, d.firstDelay, d.backlog, d.backlogOldest, d.errors)
	}
	return d
}

// Kick asks for a claim pass now.
func (d *Dispatcher) Kick() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// lease is how long a claim is held: an attempt's timeout plus room to record it. A dispatcher
// that dies mid-attempt leaves the delivery to be claimed again once the lease ends.
func (d *Dispatcher) lease() time.Duration { return d.opts.Timeout + 5*time.Second }

// Run dispatches until ctx ends, then lets the attempts in flight finish and record.
func (d *Dispatcher) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	records := make(chan recordRequest, d.opts.Workers)
	recorderDone := make(chan struct{})
	go func() { defer close(recorderDone); d.recorder(ctx, records) }()
	defer func() {
		wg.Wait()
		close(records)
		<-recorderDone
	}()
	slots := make(chan struct{}, d.opts.Workers)
	freed := make(chan struct{}, 1)
	gauges := time.NewTicker(5 * time.Second)
	defer gauges.Stop()
	d.updateBacklog(ctx)
	failures := 0
	for {
		full := false
		if free := cap(slots) - len(slots); free > 0 {
			claims, err := d.queue.Claim(ctx, d.now(), free, d.lease())
			switch {
			case err != nil && ctx.Err() == nil:
				failures++
				d.errors.Inc()
				d.log.WarnContext(ctx, "claiming deliveries failed, will retry", "error", err, "consecutive_failures", failures)
			case err == nil:
				failures = 0
			}
			for _, c := range claims {
				slots <- struct{}{}
				wg.Add(1)
				go func() {
					defer wg.Done()
					d.attempt(ctx, c, records)
					<-slots
					select {
					case freed <- struct{}{}:
					default:
					}
				}()
			}
			full = len(claims) == free
		}
		wait := d.opts.Interval
		if failures > 0 {
			wait = min(time.Duration(failures)*d.opts.Interval*2, 10*time.Second)
		}
		if full && failures == 0 {
			// Every slot is busy and more may be due: claim again as soon as a slot frees.
			wait = time.Hour
		}
		select {
		case <-ctx.Done():
			return nil
		case <-d.kick:
		case <-freed: // a chain's head finished: its successor may be due
		case <-gauges.C:
			d.updateBacklog(ctx)
		case <-time.After(wait):
		}
	}
}

// attempt sends one claimed delivery and records the result. It outlives ctx's cancellation (an
// attempt in flight finishes and is recorded) but not its own timeout.
func (d *Dispatcher) attempt(ctx context.Context, c Claim, records chan<- recordRequest) {
	ctx = telemetry.WithCustomerID(context.WithoutCancel(ctx), c.CustomerID)
	if strings.HasPrefix(c.EventType, "call.") {
		ctx = telemetry.WithCallID(ctx, c.ResourceID)
	}
	start := d.now()
	if c.AttemptCount == 0 && !c.EventTime.IsZero() {
		d.firstDelay.Observe(max(start.Sub(c.EventTime), 0).Seconds())
	}
	req := Request{Method: c.Webhook.Method, URI: c.Webhook.URI, Body: c.Payload,
		Header: SignatureHeaders(c.Webhook.Secret, c.EventID, start, c.Payload)}
	sctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	res := d.sender.Send(sctx, req)
	cancel()
	now := d.now()
	a := Attempt{At: start, HTTPStatus: res.StatusCode, Latency: res.Latency, Response: res.Body}
	if res.Err != nil {
		a.Error = truncate(res.Err.Error(), 1024)
	}
	dec := d.opts.Policy.Decide(res, c.WindowAttempts+1, c.WindowStart, now)
	d.attempts.WithLabelValues(dec.Outcome).Inc()
	d.latency.Observe(res.Latency.Seconds())
	done := make(chan error, 1)
	records <- recordRequest{Recorded{Claim: c, Attempt: a, Decision: dec}, done}
	if err := <-done; err != nil {
		d.errors.Inc()
		d.log.ErrorContext(ctx, "recording a delivery attempt failed; the delivery is sent again when its lease ends",
			"delivery_id", c.ID, "webhook", c.Webhook, "error", err)
		return
	}
	if dec.Status != DeliveryPending {
		d.finished.WithLabelValues(dec.Status).Inc()
	}
	lvl := slog.LevelDebug
	if dec.Outcome != OutcomeSucceeded {
		lvl = slog.LevelInfo
	}
	attrs := []any{"delivery_id", c.ID, "event_id", c.EventID, "event_type", c.EventType, "webhook", c.Webhook,
		"http_status", res.StatusCode, "latency_ms", res.Latency.Milliseconds(), "result", dec.Outcome}
	if a.Error != "" {
		attrs = append(attrs, "error", a.Error)
	}
	if dec.Status == DeliveryPending {
		attrs = append(attrs, "next_attempt", dec.NextAttempt)
	}
	d.log.Log(ctx, lvl, "delivery attempt", attrs...)
	if dec.Disable {
		d.log.WarnContext(ctx, "webhook answered 410 Gone; disabled", "webhook", c.Webhook)
	}
}

type recordRequest struct {
	r    Recorded
	done chan<- error
}

// recorder saves the outcomes of attempts until records is closed. Outcomes that finish close
// together are saved in one transaction, so concurrent attempts share a commit; if such a batch
// fails, each is saved alone. The attempt waits for its outcome to be durable (its delivery
// stays leased meanwhile, so nothing else of its chain is claimed).
func (d *Dispatcher) recorder(ctx context.Context, records <-chan recordRequest) {
	for first := range records {
		batch := []recordRequest{first}
	more:
		for len(batch) < d.opts.Workers {
			select {
			case r, ok := <-records:
				if !ok {
					break more
				}
				batch = append(batch, r)
			default:
				break more
			}
		}
		rs := make([]Recorded, len(batch))
		for i, r := range batch {
			rs[i] = r.r
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err := d.queue.Record(rctx, rs)
		if err != nil && len(batch) > 1 {
			for _, r := range batch {
				r.done <- d.queue.Record(rctx, []Recorded{r.r})
			}
		} else {
			for _, r := range batch {
				r.done <- err
			}
		}
		cancel()
	}
}

func (d *Dispatcher) updateBacklog(ctx context.Context) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	n, oldest, err := d.queue.Backlog(qctx)
	if err != nil {
		if ctx.Err() == nil {
			d.log.WarnContext(ctx, "measuring the delivery backlog failed", "error", err)
		}
		return
	}
	d.backlog.Set(float64(n))
	if n == 0 || oldest.IsZero() {
		d.backlogOldest.Set(0)
		return
	}
	d.backlogOldest.Set(max(d.now().Sub(oldest), 0).Seconds())
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
