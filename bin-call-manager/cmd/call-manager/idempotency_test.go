package main

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-call-manager/internal/call"
	"voipbin/bin-call-manager/internal/mysql"
	"voipbin/pkg/apierr"
	"voipbin/pkg/callapi"
	"voipbin/pkg/testenv"
)

// keyed is a create request of customer with an idempotency key, to two destinations.
func keyed(customer, key string) callapi.CreateRequest {
	return callapi.CreateRequest{CustomerID: customer, Source: tel("+15550000001"),
		Destinations: []callapi.Address{tel("+15550000002"), tel("+15550000003")}, Metadata: map[string]any{"order": "A-17"},
		IdempotencyKey: key}
}

func ids(calls []callapi.Call) []string {
	var out []string
	for _, c := range calls {
		out = append(out, c.ID)
	}
	return out
}

// dialsOf counts the dials of each call id.
func (h *harness) dialsOf() map[string]int {
	dials, _ := h.rtc.snapshot()
	n := map[string]int{}
	for _, d := range dials {
		n[d.CallID]++
	}
	return n
}

// Concurrent creates with one key and customer make exactly one set of calls, dialled once each:
// while the first is in the billing gate the others are told IDEMPOTENCY_KEY_IN_USE, and once it
// has committed they get its calls.
func TestConcurrentCreatesWithOneKeyMakeOneSetOfCalls(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	hold := make(chan struct{})
	h.billing.mu.Lock()
	h.billing.hold = hold
	h.billing.mu.Unlock()

	const n = 8
	type result struct {
		calls []callapi.Call
		err   error
	}
	results := make(chan result, n)
	go func() {
		calls, err := h.client.Create(ctx, keyed(h.customerA, "order-17"))
		results <- result{calls, err}
	}()
	// The first holds the key (its row is pending) while its gate waits.
	testenv.Eventually(t, 10*time.Second, "the first create to claim the key", func() bool {
		return h.count("SELECT COUNT(*) FROM call_requests WHERE state = 'pending'") == 1
	})
	var wg sync.WaitGroup
	for range n - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			calls, err := h.client.Create(ctx, keyed(h.customerA, "order-17"))
			results <- result{calls, err}
		}()
	}
	wg.Wait() // all answered while the gate still holds
	inUse := 0
	for range n - 1 {
		r := <-results
		e := wantAPIErr(t, r.err, apierr.FailedPrecondition, callapi.ErrReasonIdempotencyKeyInUse)
		if len(e.Details) != 1 || e.Details[0]["retry_after_ms"] == nil {
			t.Fatalf("IN_USE details = %v, want retry_after_ms", e.Details)
		}
		if !callapi.CreatedNothing(r.err) {
			t.Fatalf("IN_USE is not a definite answer: %v", r.err)
		}
		inUse++
	}
	close(hold)
	first := <-results
	if first.err != nil || len(first.calls) != 2 {
		t.Fatalf("first create = %v, %v", first.calls, first.err)
	}

	// Replays, concurrent too, get the same calls and dial nothing.
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			calls, err := h.client.Create(ctx, keyed(h.customerA, "order-17"))
			if err != nil || !slices.Equal(ids(calls), ids(first.calls)) {
				t.Errorf("replay = %v, %v; want the calls %v", ids(calls), err, ids(first.calls))
			}
		}()
	}
	wg.Wait()
	if got := h.count("SELECT COUNT(*) FROM call_calls WHERE customer_id = UNHEX(REPLACE(?, '-', ''))", h.customerA); got != 2 {
		t.Fatalf("%d calls in the store, want 2", got)
	}
	dials := h.dialsOf()
	if len(dials) != 2 || dials[first.calls[0].ID] != 1 || dials[first.calls[1].ID] != 1 {
		t.Fatalf("dials per call = %v, want one for each of %v", dials, ids(first.calls))
	}
	gates, _ := h.billing.snapshot()
	if len(gates) != 2 {
		t.Fatalf("%d gate requests, want 2", len(gates))
	}
	if got := h.counter("call_create_keyed_total", map[string]string{"outcome": "in_use"}); got != float64(inUse) {
		t.Errorf("call_create_keyed_total{in_use} = %v, want %d", got, inUse)
	}
	if got := h.counter("call_create_keyed_total", map[string]string{"outcome": "replayed"}); got != n {
		t.Errorf("call_create_keyed_total{replayed} = %v, want %d", got, n)
	}
}

// A create replayed after the first completed gets the same calls (as they are now) and dials
// nothing; another body with the key is refused; the key is the customer's own.
func TestCreateReplayedAfterCompletion(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	first, err := h.client.Create(ctx, keyed(h.customerA, "k-1"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := h.client.Create(ctx, keyed(h.customerA, "k-1"))
	if err != nil || !slices.Equal(ids(again), ids(first)) {
		t.Fatalf("replay = %v, %v; want %v", ids(again), err, ids(first))
	}
	if again[0].Metadata["order"] != "A-17" || again[0].Status != callapi.StatusDialing {
		t.Fatalf("replayed call = %+v", again[0])
	}

	other := keyed(h.customerA, "k-1")
	other.Destinations = other.Destinations[:1]
	_, err = h.client.Create(ctx, other)
	wantAPIErr(t, err, apierr.AlreadyExists, callapi.ErrReasonIdempotencyKeyReused)

	// Another customer's key of the same name is another request.
	theirs, err := h.client.Create(ctx, keyed(h.customerB, "k-1"))
	if err != nil || len(theirs) != 2 || theirs[0].ID == first[0].ID {
		t.Fatalf("customer B's create = %v, %v", ids(theirs), err)
	}
	if dials := h.dialsOf(); len(dials) != 4 {
		t.Fatalf("dials = %v, want 4 calls dialled once", dials)
	}
	if gates, _ := h.billing.snapshot(); len(gates) != 4 {
		t.Fatalf("%d gate requests, want 4", len(gates))
	}
}

// An attempt that died after claiming its key (and maybe after the gate) is taken over once its
// lease has passed: the new attempt uses the same call ids, so billing's reservations for them
// are reused and none leaks; while the lease runs the key is in use.
func TestDeadAttemptIsTakenOverWithItsCallIDs(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	store := mysql.NewCallStore(h.db)
	req := keyed(h.customerA, "crashed")
	dead := []string{uuid.NewString(), uuid.NewString()}
	lease := time.Now().Add(time.Second)
	if _, err := store.Claim(ctx, &call.Request{CustomerID: h.customerA, Key: req.IdempotencyKey, Hash: call.RequestHash(req),
		CallIDs: dead, State: call.RequestPending, Attempt: uuid.NewString(), TMLease: lease, TMCreate: time.Now()}); err != nil {
		t.Fatal(err)
	}
	_, err := h.client.Create(ctx, req)
	wantAPIErr(t, err, apierr.FailedPrecondition, callapi.ErrReasonIdempotencyKeyInUse)

	// Retried as a client would, until the lease has passed.
	var calls []callapi.Call
	testenv.Eventually(t, 10*time.Second, "the take-over of the dead attempt", func() bool {
		calls, err = h.client.Create(ctx, req)
		return !apierr.HasReason(err, callapi.ErrReasonIdempotencyKeyInUse)
	})
	if time.Now().Before(lease) {
		t.Fatal("taken over before the lease passed")
	}
	if err != nil || !slices.Equal(ids(calls), dead) {
		t.Fatalf("take-over = %v, %v; want the dead attempt's call ids %v", ids(calls), err, dead)
	}
	gates, _ := h.billing.snapshot()
	var gated []string
	for _, g := range gates {
		gated = append(gated, g.CallID)
	}
	if !slices.Equal(gated, dead) {
		t.Fatalf("gated %v, want the dead attempt's ids %v (billing reserves once per id)", gated, dead)
	}
	if got := h.counter("call_create_keyed_total", map[string]string{"outcome": "taken_over"}); got != 1 {
		t.Errorf("call_create_keyed_total{taken_over} = %v, want 1", got)
	}
}

// A refusal forgets the key, so that a retry (after a top-up) may place the calls; the
// reservations are released.
func TestRefusedCreateFreesItsKey(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx := context.Background()
	h.billing.setBudget(h.customerA, 1)
	_, err := h.client.Create(ctx, keyed(h.customerA, "poor"))
	wantAPIErr(t, err, apierr.PaymentRequired, callapi.ErrReasonInsufficientBalance)
	if !callapi.CreatedNothing(err) {
		t.Fatalf("a refusal is not a definite answer: %v", err)
	}
	if n := h.count("SELECT COUNT(*) FROM call_requests"); n != 0 {
		t.Fatalf("%d idempotency records after a refusal, want 0", n)
	}
	if _, released := h.billing.snapshot(); len(released) != 1 {
		t.Fatalf("released %v, want the first call's reservation", released)
	}
	h.billing.setBudget(h.customerA, 2)
	if calls, err := h.client.Create(ctx, keyed(h.customerA, "poor")); err != nil || len(calls) != 2 {
		t.Fatalf("retry after the top-up = %v, %v", calls, err)
	}
}

// A caller whose deadline leaves less than the gate and dial budgets is refused before anything
// happens, with an answer that says nothing was created.
func TestDeadlineTooShortIsRefusedBeforeAnything(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second) // the old gateway's timeout
	defer cancel()
	_, err := h.client.Create(ctx, keyed(h.customerA, "short"))
	wantAPIErr(t, err, apierr.Unavailable, callapi.ErrReasonDeadlineTooShort)
	if !callapi.CreatedNothing(err) || errors.Is(err, callapi.ErrOutcomeUnknown) {
		t.Fatalf("DEADLINE_TOO_SHORT is not a definite answer: %v", err)
	}
	if gates, _ := h.billing.snapshot(); len(gates) != 0 {
		t.Fatalf("%d gate requests, want 0", len(gates))
	}
	if n := h.count("SELECT COUNT(*) FROM call_requests") + h.count("SELECT COUNT(*) FROM call_calls"); n != 0 {
		t.Fatalf("%d rows written, want 0", n)
	}
}
