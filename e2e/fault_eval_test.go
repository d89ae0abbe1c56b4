package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"voipbin/pkg/billingapi"
)

// scenario builds faultData the way a healthy platform would leave it, for calls placed one per
// second; tests then break one thing at a time.
type scenario struct {
	begin time.Time
	d     faultData
	n     int
}

const testRate = 20_000

func newScenario() *scenario {
	begin := time.Date(2026, 12, 6, 4, 0, 0, 0, time.UTC)
	return &scenario{begin: begin, d: faultData{
		account:   billingapi.Account{Balance: 1_000_000},
		ledger:    []billingapi.Billing{{Kind: "balance_add", Amount: 1_000_000}},
		sipIDs:    map[string]string{},
		carrier:   map[string]string{},
		wsDown:    [][2]time.Time{{begin, begin.Add(time.Millisecond)}},
		wsOpens:   1,
		wsNotices: nil,
	}}
}

// call adds one call placed with key, answered by the carrier and hung up by it after dur
// seconds, with its four events committed, delivered and seen on the WebSocket, and its charge.
func (s *scenario) call(key string, dur int) faultCall {
	s.n++
	at := s.begin.Add(time.Duration(s.n) * time.Second)
	id := fmt.Sprintf("00000000-0000-0000-0000-%012d", s.n)
	c := faultCall{ID: id, Status: "hangup", HangupBy: "remote", HangupReason: "normal", Duration: dur,
		Metadata: map[string]string{"fault_key": key}, TMCreate: at}
	s.d.calls = append(s.d.calls, c)
	for i, typ := range []string{"call.created", "call.ringing", "call.answered", "call.ended"} {
		e := outboxEvent{EventID: fmt.Sprintf("ev-%d-%d", s.n, i+1), EventType: typ, Timestamp: at.Add(time.Duration(i) * time.Second),
			CallID: id, Sequence: int64(i + 1)}
		s.d.events = append(s.d.events, e)
		s.d.deliveries = append(s.d.deliveries, delivery{At: e.Timestamp, EventID: e.EventID, EventType: typ, CallID: id, Sequence: e.Sequence, Verified: true})
		s.d.wsEvents = append(s.d.wsEvents, wsEvent{At: e.Timestamp, EventID: e.EventID, EventType: typ, CallID: id, Sequence: e.Sequence})
	}
	price := int64((dur+59)/60) * testRate
	s.d.account.Balance -= price
	if price > 0 {
		s.d.ledger = append(s.d.ledger, billingapi.Billing{Kind: "call", CallID: id, Amount: -price, RatePerMinute: testRate})
	}
	s.d.sipIDs[id] = "sip-" + id
	s.d.carrier["sip-"+id] = "hung up"
	return c
}

// request adds the client's view of a key: one attempt answered 201 with callIDs.
func (s *scenario) request(key string, callIDs ...string) {
	s.d.reqs = append(s.d.reqs, logical{Key: key, Start: s.begin, End: s.begin.Add(time.Second), Outcome: "created", CallIDs: callIDs,
		Attempts: []attempt{{Phase: "warmup", Start: s.begin, Status: 201}}})
}

func (s *scenario) evaluate() map[string]*check {
	r := &faultRun{cfg: faultConfig{HoldSecs: 3, Rate60: testRate, Initial: 1_000_000, RetryFor: time.Minute}, begin: s.begin, phase: &phaseClock{}}
	out := map[string]*check{}
	for _, c := range r.evaluate(s.d).checks {
		out[strings.Fields(c.Name)[0]+" "+strings.Fields(c.Name)[1]] = c
	}
	return out
}

func violations(checks map[string]*check) map[string]int {
	out := map[string]int{}
	for name, c := range checks {
		if len(c.Violations) > 0 {
			out[name] = len(c.Violations)
		}
	}
	return out
}

// TestFaultChecks proves the fault test's checks pass on a platform that kept its promises and
// flag each broken promise, and only that one.
func TestFaultChecks(t *testing.T) {
	healthy := func() *scenario {
		s := newScenario()
		for _, k := range []string{"k1", "k2", "k3"} {
			c := s.call(k, 3)
			s.request(k, c.ID)
		}
		return s
	}
	tests := []struct {
		name   string
		mutate func(s *scenario)
		want   map[string]int // check (first two words of its name) → violations
	}{
		{"healthy", func(*scenario) {}, map[string]int{}},
		{"a retried key placed a second call", func(s *scenario) {
			s.call("k1", 3)
		}, map[string]int{"every Idempotency-Key": 1}},
		{"a key without a definitive answer", func(s *scenario) {
			s.d.reqs[0].Outcome = "undecided"
		}, map[string]int{"every Idempotency-Key": 1}},
		{"a call never ended", func(s *scenario) {
			s.d.calls[0].Status, s.d.calls[0].Duration = "progressing", 0
			s.d.events = append(s.d.events[:3], s.d.events[4:]...)
			s.d.deliveries = append(s.d.deliveries[:3], s.d.deliveries[4:]...)
			s.d.wsEvents = append(s.d.wsEvents[:3], s.d.wsEvents[4:]...)
			s.d.ledger = append(s.d.ledger[:1], s.d.ledger[2:]...)
			s.d.account.Balance += testRate
		}, map[string]int{"every call": 1, "webhook events": 1, "calls record": 1}},
		{"a call ended twice", func(s *scenario) {
			e := s.d.events[3]
			e.EventID, e.Sequence = "ev-dup", 5
			s.d.events = append(s.d.events, e)
			s.d.deliveries = append(s.d.deliveries, delivery{EventID: e.EventID, EventType: e.EventType, CallID: e.CallID, Sequence: 5, Verified: true})
			s.d.wsEvents = append(s.d.wsEvents, wsEvent{EventID: e.EventID, CallID: e.CallID, Sequence: 5})
		}, map[string]int{"every call": 1}},
		{"Redis loss: the reaper's time as the end", func(s *scenario) {
			s.d.calls[1].Duration, s.d.calls[1].HangupReason, s.d.calls[1].HangupBy = 72, "failed", "local"
			s.d.ledger[2].Amount = -2 * testRate
			s.d.account.Balance -= testRate
		}, map[string]int{"calls record": 1}},
		{"an answered call recorded as failed", func(s *scenario) {
			s.d.calls[1].Duration, s.d.calls[1].HangupReason, s.d.calls[1].HangupBy = 0, "failed", "local"
			s.d.ledger = append(s.d.ledger[:2], s.d.ledger[3:]...)
			s.d.account.Balance += testRate
		}, map[string]int{"calls record": 1}},
		{"a webhook event lost", func(s *scenario) {
			s.d.deliveries = append(s.d.deliveries[:2], s.d.deliveries[3:]...)
		}, map[string]int{"webhook events": 1}},
		{"webhook events out of order", func(s *scenario) {
			s.d.deliveries[1], s.d.deliveries[2] = s.d.deliveries[2], s.d.deliveries[1]
		}, map[string]int{"webhook events": 1}},
		{"a forged webhook", func(s *scenario) {
			s.d.deliveries[0].Verified = false
		}, map[string]int{"webhook events": 1}},
		{"a call not charged", func(s *scenario) {
			s.d.ledger = s.d.ledger[:len(s.d.ledger)-1]
			s.d.account.Balance += testRate
		}, map[string]int{"balance =": 2}},
		{"the balance disagrees with the ledger", func(s *scenario) {
			s.d.account.Balance -= 5
		}, map[string]int{"balance =": 2}},
		{"money left reserved", func(s *scenario) {
			s.d.account.Reserved = testRate
		}, map[string]int{"balance =": 1}},
		{"a 500 and a 503 without Retry-After", func(s *scenario) {
			s.d.reqs[0].Attempts = append([]attempt{{Phase: "mariadb down", Status: 500, Reason: "INTERNAL_ERROR"},
				{Phase: "rabbitmq down", Status: 503, Reason: "SERVICE_UNAVAILABLE"},
				{Phase: "redis down", Status: 503, Reason: "SERVICE_UNAVAILABLE", RetryAfter: "1"}}, s.d.reqs[0].Attempts...)
		}, map[string]int{"no 500": 1, "every 503": 1}},
		{"the WebSocket missed an event silently", func(s *scenario) {
			s.d.wsEvents = s.d.wsEvents[1:]
		}, map[string]int{"websocket: no": 1}},
		{"the WebSocket missed an event and was closed", func(s *scenario) {
			s.d.wsEvents = s.d.wsEvents[1:]
			s.d.wsNotices = []wsNotice{{At: s.d.events[0].Timestamp.Add(2 * time.Second), What: "close 1012"}}
		}, map[string]int{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := healthy()
			tt.mutate(s)
			got := violations(s.evaluate())
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				for _, c := range s.evaluate() {
					for _, v := range c.Violations {
						t.Logf("%s: %s", c.Name, v)
					}
				}
				t.Fatalf("violations = %v, want %v", got, tt.want)
			}
		})
	}
}
