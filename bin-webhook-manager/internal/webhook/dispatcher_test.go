package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"voipbin/pkg/event"
)

type fakeFanoutStore struct {
	hooks  []Webhook
	err    error
	added  []Delivery
	addErr error
}

func (f *fakeFanoutStore) EnabledWebhooks(context.Context, string) ([]Webhook, error) {
	return f.hooks, f.err
}

func (f *fakeFanoutStore) AddDeliveries(_ context.Context, ds []Delivery) (int, error) {
	if f.addErr != nil {
		return 0, f.addErr
	}
	f.added = append(f.added, ds...)
	return len(ds), nil
}

func TestFanout(t *testing.T) {
	ev, err := event.New("call.ended", "c1", "call", "call-1", 4, map[string]any{"call_id": "call-1"})
	if err != nil {
		t.Fatal(err)
	}
	hooks := []Webhook{
		{ID: "all", CustomerID: "c1", Status: StatusEnabled, EventTypes: []string{"*"}},
		{ID: "calls", CustomerID: "c1", Status: StatusEnabled, EventTypes: []string{"call.*"}},
		{ID: "created-only", CustomerID: "c1", Status: StatusEnabled, EventTypes: []string{"call.created"}},
		{ID: "disabled", CustomerID: "c1", Status: StatusDisabled, EventTypes: []string{"*"}},
	}
	t.Run("one delivery per matching webhook", func(t *testing.T) {
		store := &fakeFanoutStore{hooks: hooks}
		kicks := 0
		if err := NewFanout(store, func() { kicks++ }).Handle(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range store.added {
			got = append(got, d.WebhookID)
			var body event.Event
			if err := json.Unmarshal(d.Payload, &body); err != nil || body.EventID != ev.EventID || string(body.Data) != string(ev.Data) {
				t.Fatalf("payload %s is not the event envelope", d.Payload)
			}
			if d.EventID != ev.EventID || d.ResourceID != "call-1" || d.Sequence != 4 || d.Status != DeliveryPending || d.ID == "" {
				t.Fatalf("delivery %+v does not describe the event", d)
			}
		}
		if want := []string{"all", "calls"}; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
			t.Fatalf("deliveries to %v, want %v", got, want)
		}
		if kicks != 1 {
			t.Fatalf("kicked %d times, want 1", kicks)
		}
	})
	t.Run("no matching webhook is done", func(t *testing.T) {
		store := &fakeFanoutStore{hooks: hooks[2:]}
		if err := NewFanout(store, nil).Handle(context.Background(), ev); err != nil || len(store.added) != 0 {
			t.Fatalf("Handle = %v with %d deliveries, want nil and none", err, len(store.added))
		}
	})
	t.Run("store failures are returned, never swallowed", func(t *testing.T) {
		boom := errors.New("mysql down")
		for _, store := range []*fakeFanoutStore{{err: boom}, {hooks: hooks, addErr: boom}} {
			if err := NewFanout(store, nil).Handle(context.Background(), ev); !errors.Is(err, boom) {
				t.Fatalf("Handle = %v, want it to wrap %v", err, boom)
			}
		}
	})
}

// fakeQueue hands out claims once and records what the dispatcher reports.
type fakeQueue struct {
	mu       sync.Mutex
	pending  []Claim
	recorded []recorded
	done     chan struct{}
}

type recorded struct {
	claim    Claim
	attempt  Attempt
	decision Decision
}

func (q *fakeQueue) Claim(_ context.Context, _ time.Time, limit int, lease time.Duration) ([]Claim, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := min(limit, len(q.pending))
	out := q.pending[:n]
	q.pending = q.pending[n:]
	return out, nil
}

func (q *fakeQueue) Record(_ context.Context, rs []Recorded) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, r := range rs {
		q.recorded = append(q.recorded, recorded{r.Claim, r.Attempt, r.Decision})
		q.done <- struct{}{}
	}
	return nil
}

func (q *fakeQueue) Backlog(context.Context) (int, time.Time, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending), time.Time{}, nil
}

type fakeSender struct {
	mu       sync.Mutex
	requests []Request
	result   func(r Request) Result
	started  chan struct{}
	release  chan struct{}
}

func (s *fakeSender) Send(ctx context.Context, r Request) Result {
	s.mu.Lock()
	s.requests = append(s.requests, r)
	s.mu.Unlock()
	if s.started != nil {
		s.started <- struct{}{}
		<-s.release
	}
	return s.result(r)
}

func claimFor(id string, secret Secret) Claim {
	return Claim{
		Delivery: Delivery{ID: id, EventID: "ev-" + id, EventType: "call.ended", ResourceID: "call-1", CustomerID: "c1",
			Payload: []byte(`{"event_id":"ev-` + id + `"}`), EventTime: time.Now().Add(-time.Second)},
		Webhook:     Webhook{ID: "w1", URI: "https://example.com/hook", Method: "POST", Secret: secret, Status: StatusEnabled},
		Token:       "tok",
		WindowStart: time.Now(),
	}
}

func TestDispatcherSendsSignedAndRecords(t *testing.T) {
	secret, _ := NewSecret()
	q := &fakeQueue{pending: []Claim{claimFor("d1", secret), claimFor("d2", secret)}, done: make(chan struct{}, 2)}
	s := &fakeSender{result: func(r Request) Result {
		if r.Header[HeaderWebhookID] == "ev-d1" {
			return Result{StatusCode: 200, Body: []byte("ok"), Latency: 3 * time.Millisecond}
		}
		return Result{StatusCode: 503, Latency: time.Millisecond}
	}}
	reg := prometheus.NewRegistry()
	d := NewDispatcher(q, s, slog.New(slog.NewJSONHandler(io.Discard, nil)), DispatcherOptions{Registerer: reg,
		Policy: Policy{Base: time.Minute, Jitter: func(time.Duration) time.Duration { return 0 }}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	<-q.done
	<-q.done
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	for _, r := range s.requests {
		if r.Method != "POST" || r.URI != "https://example.com/hook" {
			t.Fatalf("request %s %s", r.Method, r.URI)
		}
		if got, want := r.Header[HeaderSignature], Signature(secret, r.Body); got != want {
			t.Fatalf("X-VoIPBIN-Signature %q, want %q", got, want)
		}
		if got, want := r.Header[HeaderWebhookSignature], StandardSignature(secret, r.Header[HeaderWebhookID], r.Header[HeaderWebhookTimestamp], r.Body); got != want {
			t.Fatalf("webhook-signature %q, want %q", got, want)
		}
	}
	byID := map[string]recorded{}
	for _, r := range q.recorded {
		byID[r.claim.ID] = r
	}
	if r := byID["d1"]; r.decision.Status != DeliverySucceeded || r.attempt.HTTPStatus != 200 || string(r.attempt.Response) != "ok" || r.attempt.Latency != 3*time.Millisecond {
		t.Fatalf("d1 recorded %+v", r)
	}
	if r := byID["d2"]; r.decision.Status != DeliveryPending || r.decision.Outcome != OutcomeRetry || r.attempt.HTTPStatus != 503 ||
		r.decision.NextAttempt.Sub(r.attempt.At) < 29*time.Second {
		t.Fatalf("d2 recorded %+v, want a retry in about 30s", r)
	}
	if got := testutil.ToFloat64(d.attempts.WithLabelValues(OutcomeSucceeded)); got != 1 {
		t.Fatalf("succeeded attempts metric = %v", got)
	}
	if got := testutil.ToFloat64(d.attempts.WithLabelValues(OutcomeRetry)); got != 1 {
		t.Fatalf("retry attempts metric = %v", got)
	}
	if got := testutil.CollectAndCount(reg, "webhook_delivery_first_attempt_delay_seconds"); got != 1 {
		t.Fatalf("first attempt delay histogram missing (%d)", got)
	}
}

// Shutdown lets an attempt in flight finish and be recorded before Run returns.
func TestDispatcherFinishesAttemptsInFlightOnShutdown(t *testing.T) {
	secret, _ := NewSecret()
	q := &fakeQueue{pending: []Claim{claimFor("d1", secret)}, done: make(chan struct{}, 1)}
	s := &fakeSender{started: make(chan struct{}), release: make(chan struct{}),
		result: func(Request) Result { return Result{StatusCode: 200} }}
	d := NewDispatcher(q, s, slog.New(slog.NewJSONHandler(io.Discard, nil)), DispatcherOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	<-s.started
	cancel()
	select {
	case <-done:
		t.Fatal("Run returned while an attempt was in flight")
	case <-time.After(50 * time.Millisecond): // a negative check: nothing may happen in this time
	}
	close(s.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(q.recorded) != 1 || q.recorded[0].decision.Status != DeliverySucceeded {
		t.Fatalf("recorded %+v, want the attempt in flight", q.recorded)
	}
}
