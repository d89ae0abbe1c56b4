package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/pkg/apierr"
	"voipbin/pkg/event"
	"voipbin/pkg/testenv"
	"voipbin/pkg/webhookapi"
)

func callEvent(t testing.TB, typ, customer, call string, seq int64) event.Event {
	t.Helper()
	ev, err := event.New(typ, customer, "call", call, seq, map[string]any{"id": call, "call_id": call, "status": typ})
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func deliveriesOf(t testing.TB, s *managerProc, customer, webhookID string) []webhookapi.Delivery {
	t.Helper()
	list, err := s.client.Deliveries(context.Background(), customer, webhookID, 100, "")
	if err != nil {
		t.Fatal(err)
	}
	return list.Result
}

// A customer's Flask endpoint verifies both signatures of every delivery of a call's events, and
// receives them in sequence order; the delivery log shows each attempt.
func TestFlaskReceiverVerifiesSignedDeliveriesInOrder(t *testing.T) {
	rcv := startReceiver(t)
	s := newService(t)
	ctx := context.Background()
	customer := uuid.NewString()
	w, err := s.client.Create(ctx, webhookapi.WriteRequest{CustomerID: customer, Name: "flask", URI: rcv.hookURL(), EventTypes: []string{"call.*"}})
	if err != nil {
		t.Fatal(err)
	}
	rcv.configure(t, map[string]any{"secret": w.Secret})

	call := uuid.NewString()
	types := []string{"call.created", "call.ringing", "call.answered", "call.updated", "call.ended"}
	for i, typ := range types {
		publish(t, s.conn, event.ExchangeCall, callEvent(t, typ, customer, call, int64(i+1)))
	}
	// Not for this webhook: a billing event, and another customer's call.
	publish(t, s.conn, event.ExchangeBilling, func() event.Event {
		ev, _ := event.New("billing.charged", customer, "billing", uuid.NewString(), 1, map[string]any{})
		return ev
	}())
	publish(t, s.conn, event.ExchangeCall, callEvent(t, "call.created", uuid.NewString(), uuid.NewString(), 1))

	testenv.Eventually(t, 30*time.Second, "five deliveries", func() bool { return len(rcv.received(t)) >= len(types) })
	got := rcv.received(t)
	if len(got) != len(types) {
		t.Fatalf("receiver got %d requests, want %d: %+v", len(got), len(types), got)
	}
	for i, r := range got {
		if !r.VerifiedVoIPBIN || !r.VerifiedStandard || r.Status != 200 {
			t.Fatalf("delivery %d failed verification: %+v", i, r)
		}
		if r.EventType != types[i] || r.Sequence != int64(i+1) || r.CallID != call || r.Method != "POST" || r.WebhookID != r.EventID {
			t.Fatalf("delivery %d = %+v, want %s (sequence %d) of call %s", i, r, types[i], i+1, call)
		}
	}
	// The same deliveries, verified by the Standard Webhooks reference library too.
	t.Run("standardwebhooks library", func(t *testing.T) { verifyWithStandardWebhooks(t, w.Secret, got) })
	testenv.Eventually(t, 10*time.Second, "the log to show every delivery succeeded", func() bool {
		ds := deliveriesOf(t, s, customer, w.ID)
		if len(ds) != len(types) {
			return false
		}
		for _, d := range ds {
			if d.Status != webhookapi.DeliverySucceeded {
				return false
			}
		}
		return true
	})
	for _, d := range deliveriesOf(t, s, customer, w.ID) {
		if len(d.Attempts) != 1 || d.Attempts[0].HTTPStatus != 200 || d.Attempts[0].Response != "ok" || d.Attempts[0].At.IsZero() {
			t.Fatalf("delivery log %+v, want one 200 attempt answered \"ok\"", d)
		}
	}

	// After a rotation the receiver still holds the old secret: it answers 401, and a 4xx fails
	// the delivery at once. Once the receiver learns the new secret, a manual retry sends it again.
	rot, err := s.client.RotateSecret(ctx, customer, w.ID)
	if err != nil {
		t.Fatal(err)
	}
	late := callEvent(t, "call.updated", customer, call, 6)
	publish(t, s.conn, event.ExchangeCall, late)
	var failed webhookapi.Delivery
	testenv.Eventually(t, 30*time.Second, "the delivery signed with the new secret to fail", func() bool {
		for _, d := range deliveriesOf(t, s, customer, w.ID) {
			if d.EventID == late.EventID && d.Status == webhookapi.DeliveryFailed {
				failed = d
				return true
			}
		}
		return false
	})
	if len(failed.Attempts) != 1 || failed.Attempts[0].HTTPStatus != 401 {
		t.Fatalf("a 401 was retried: %+v", failed)
	}
	rcv.configure(t, map[string]any{"secret": rot.Secret})
	if _, err := s.client.Retry(ctx, customer, w.ID, failed.ID); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the retried delivery to succeed", func() bool {
		for _, d := range deliveriesOf(t, s, customer, w.ID) {
			if d.ID == failed.ID {
				return d.Status == webhookapi.DeliverySucceeded && len(d.Attempts) == 2 && d.Attempts[1].HTTPStatus == 200
			}
		}
		return false
	})
	last := rcv.received(t)
	if r := last[len(last)-1]; r.EventID != late.EventID || !r.VerifiedVoIPBIN || !r.VerifiedStandard {
		t.Fatalf("last request %+v, want the retried event verified", r)
	}

	// Secrets never reach the log; the metrics show the work.
	logText := s.log()
	for _, secret := range []string{w.Secret, rot.Secret, strings.TrimPrefix(rot.Secret, "whsec_")} {
		if strings.Contains(logText, secret) {
			t.Fatal("a webhook secret appears in the service's log")
		}
	}
	if !strings.Contains(logText, `"customer_id":"`+customer+`"`) || !strings.Contains(logText, `"call_id":"`+call+`"`) {
		t.Fatal("attempt log lines lack customer_id and call_id")
	}
	m := s.metrics(t)
	for _, want := range []string{`webhook_delivery_attempts_total{result="succeeded"} 6`, `webhook_delivery_attempts_total{result="failed"} 1`,
		"webhook_delivery_attempt_seconds_count 7", "webhook_delivery_backlog ", "webhook_delivery_backlog_oldest_seconds ",
		"webhook_delivery_first_attempt_delay_seconds_count 6"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// A receiver that answers 500 three times and then 200 gets the event exactly once more after the
// failures: on the fourth attempt, and never again.
func TestFailingReceiverGetsTheEventOnTheFourthAttemptOnly(t *testing.T) {
	rcv := startReceiver(t)
	s := newService(t)
	ctx := context.Background()
	customer := uuid.NewString()
	w, err := s.client.Create(ctx, webhookapi.WriteRequest{CustomerID: customer, URI: rcv.hookURL(), EventTypes: []string{"*"}})
	if err != nil {
		t.Fatal(err)
	}
	rcv.configure(t, map[string]any{"secret": w.Secret, "fail_first": 3, "fail_status": 500})

	call := uuid.NewString()
	first := callEvent(t, "call.created", customer, call, 1)
	publish(t, s.conn, event.ExchangeCall, first)
	testenv.Eventually(t, 30*time.Second, "the fourth attempt", func() bool { return len(rcv.received(t)) >= 4 })
	// The next event of the call waits for the first to be settled, so once it has arrived any
	// further copy of the first would have arrived before it.
	rcv.configure(t, map[string]any{"secret": w.Secret, "fail_first": 0})
	sentinel := callEvent(t, "call.ended", customer, call, 2)
	publish(t, s.conn, event.ExchangeCall, sentinel)
	testenv.Eventually(t, 30*time.Second, "the next event", func() bool {
		got := rcv.received(t)
		return got[len(got)-1].EventID == sentinel.EventID
	})
	got := rcv.received(t)
	var statuses []int
	for _, r := range got {
		if r.EventID == first.EventID {
			statuses = append(statuses, r.Status)
		}
	}
	if fmt.Sprint(statuses) != "[500 500 500 200]" {
		t.Fatalf("the first event was answered %v, want [500 500 500 200]", statuses)
	}
	if len(got) != 5 {
		t.Fatalf("receiver got %d requests, want 4 of the first event and 1 of the next", len(got))
	}
	for _, d := range deliveriesOf(t, s, customer, w.ID) {
		if d.EventID != first.EventID {
			continue
		}
		var codes []int
		for _, a := range d.Attempts {
			codes = append(codes, a.HTTPStatus)
		}
		if d.Status != webhookapi.DeliverySucceeded || fmt.Sprint(codes) != "[500 500 500 200]" {
			t.Fatalf("delivery log: %s with attempts %v", d.Status, codes)
		}
		for i := 1; i < len(d.Attempts); i++ {
			if gap := d.Attempts[i].At.Sub(d.Attempts[i-1].At); gap < 100*time.Millisecond {
				t.Fatalf("attempts %d and %d only %s apart: no backoff", i-1, i, gap)
			}
		}
	}
}

// A 410 Gone disables the webhook; its deliveries stop until it is enabled again.
func TestGoneDisablesTheWebhook(t *testing.T) {
	rcv := startReceiver(t)
	s := newService(t)
	ctx := context.Background()
	customer := uuid.NewString()
	w, err := s.client.Create(ctx, webhookapi.WriteRequest{CustomerID: customer, URI: rcv.hookURL(), EventTypes: []string{"call.*"}})
	if err != nil {
		t.Fatal(err)
	}
	rcv.configure(t, map[string]any{"secret": w.Secret, "fail_first": 1, "fail_status": 410})
	publish(t, s.conn, event.ExchangeCall, callEvent(t, "call.created", customer, uuid.NewString(), 1))
	testenv.Eventually(t, 30*time.Second, "the webhook to be disabled", func() bool {
		got, err := s.client.Get(ctx, customer, w.ID)
		return err == nil && got.Status == webhookapi.StatusDisabled
	})
	if ds := deliveriesOf(t, s, customer, w.ID); len(ds) != 1 || ds[0].Status != webhookapi.DeliveryFailed || len(ds[0].Attempts) != 1 {
		t.Fatalf("deliveries %+v, want one failed after one attempt", ds)
	}
	_, err = s.client.Retry(ctx, customer, w.ID, deliveriesOf(t, s, customer, w.ID)[0].ID)
	if e, ok := apierr.As(err); !ok || e.Reason != webhookapi.ErrReasonWebhookDisabled {
		t.Fatalf("retry on a disabled webhook = %v", err)
	}
}

// Deliveries pending when the process is killed all arrive after it restarts, and so do events
// published while it was down.
func TestDeliveriesSurviveAKill(t *testing.T) {
	rcv := startReceiver(t)
	s := newService(t, "WEBHOOK_WORKERS=2")
	ctx := context.Background()
	customer := uuid.NewString()
	w, err := s.client.Create(ctx, webhookapi.WriteRequest{CustomerID: customer, URI: rcv.hookURL(), EventTypes: []string{"call.*"}})
	if err != nil {
		t.Fatal(err)
	}
	// A slow receiver: with two workers, most deliveries are still pending when the kill comes.
	rcv.configure(t, map[string]any{"secret": w.Secret, "delay": 0.25})
	want := map[string]bool{}
	for range 30 {
		ev := callEvent(t, "call.created", customer, uuid.NewString(), 1)
		want[ev.EventID] = true
		publish(t, s.conn, event.ExchangeCall, ev)
	}
	testenv.Eventually(t, 30*time.Second, "the first deliveries", func() bool { return len(rcv.received(t)) >= 3 })
	s.kill()
	before := distinct(rcv.received(t))
	if len(before) >= len(want) {
		t.Fatalf("all %d delivered before the kill: the test proves nothing", len(before))
	}
	for range 10 {
		ev := callEvent(t, "call.created", customer, uuid.NewString(), 1)
		want[ev.EventID] = true
		publish(t, s.conn, event.ExchangeCall, ev)
	}
	rcv.configure(t, map[string]any{"secret": w.Secret, "delay": 0})
	s.start()
	testenv.Eventually(t, 60*time.Second, "every event delivered after the restart", func() bool {
		return len(distinct(rcv.received(t))) >= len(want)
	})
	got := distinct(rcv.received(t))
	for id := range want {
		if !got[id] {
			t.Fatalf("event %s never arrived", id)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("receiver got %d distinct events, want %d", len(got), len(want))
	}
	// Requests in flight at the kill were never recorded: their leases run out and they are sent
	// again, so the log ends with every delivery settled.
	testenv.Eventually(t, 60*time.Second, "every delivery recorded as succeeded", func() bool {
		ds := deliveriesOf(t, s, customer, w.ID)
		for _, d := range ds {
			if d.Status != webhookapi.DeliverySucceeded {
				return false
			}
		}
		return len(ds) == len(want)
	})
	t.Logf("%d events: %d delivered before the kill, %d requests in all (at-least-once: a request in flight at the kill is sent again)",
		len(want), len(before), len(rcv.received(t)))
}

func distinct(rs []received) map[string]bool {
	out := map[string]bool{}
	for _, r := range rs {
		if r.Status == 200 {
			out[r.EventID] = true
		}
	}
	return out
}

// Two instances share the work: one records events, both send deliveries, and every call's events
// still reach the receiver once each and in sequence order.
func TestTwoInstancesKeepEachCallInOrder(t *testing.T) {
	rcv := startReceiver(t)
	a := newService(t)
	b := a.another()
	ctx := context.Background()
	customer := uuid.NewString()
	w, err := a.client.Create(ctx, webhookapi.WriteRequest{CustomerID: customer, URI: rcv.hookURL(), EventTypes: []string{"call.*"}})
	if err != nil {
		t.Fatal(err)
	}
	// A little latency at the receiver makes both dispatchers busy at once.
	rcv.configure(t, map[string]any{"secret": w.Secret, "delay": 0.02})
	const calls, perCall = 20, 5
	var evs []event.Event
	for seq := int64(1); seq <= perCall; seq++ {
		for c := range calls {
			evs = append(evs, callEvent(t, "call.updated", customer, fmt.Sprintf("00000000-0000-0000-0000-%012d", c), seq))
		}
	}
	for _, ev := range evs {
		publish(t, a.conn, event.ExchangeCall, ev)
	}
	testenv.Eventually(t, 60*time.Second, "every event", func() bool { return len(rcv.received(t)) >= len(evs) })
	got := rcv.received(t)
	if len(got) != len(evs) {
		t.Fatalf("receiver got %d requests, want %d (once each)", len(got), len(evs))
	}
	next := map[string]int64{}
	for _, r := range got {
		if !r.VerifiedVoIPBIN || !r.VerifiedStandard {
			t.Fatalf("unverified delivery %+v", r)
		}
		if r.Sequence != next[r.ResourceID]+1 {
			t.Fatalf("call %s: sequence %d arrived after %d", r.ResourceID, r.Sequence, next[r.ResourceID])
		}
		next[r.ResourceID] = r.Sequence
	}
	for _, s := range []*managerProc{a, b} {
		if n := strings.Count(s.log(), `"msg":"delivery attempt"`); n == 0 {
			t.Errorf("instance with admin %s made no attempt: dispatch is not shared", s.admin)
		}
	}
}
