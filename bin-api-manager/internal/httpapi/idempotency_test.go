package httpapi_test

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/pkg/testenv"
)

// A create whose RPC times out leaves its Idempotency-Key in use: retries get 409
// IDEMPOTENCY_KEY_IN_USE with Retry-After (from the gateway while the first request still waits,
// then from the call manager, which is still placing the calls), and once the call manager has
// finished, the first outcome — the same status and body every time — and never a second call.
func TestCreateWhoseRPCTimedOutKeepsItsKeyUntilTheOutcomeIsKnown(t *testing.T) {
	h := newHarness(t, options{createTimeout: 300 * time.Millisecond})
	slow := make(chan struct{})
	var release sync.Once
	// Registered after the harness's cleanups, so it runs first: a failing test never leaves
	// the stand-in's handlers blocked.
	t.Cleanup(func() { release.Do(func() { close(slow) }) })
	h.calls.slow = slow
	c := h.newCustomer("acme")
	key := "order-" + uuid.NewString()
	body := callBody(targetSlow)

	h.expectError(503, "REQUEST_TIMEOUT", "POST", "/v1.0/calls", c.token, body, "Idempotency-Key", key)

	// At once: the gateway still holds the key (the first request's lease).
	resp, b := h.do("POST", "/v1.0/calls", c.token, body, "Idempotency-Key", key)
	if resp.StatusCode != 409 || decodeError(t, b).Reason != "IDEMPOTENCY_KEY_IN_USE" || retryAfter(t, resp.Header.Get("Retry-After")) < 1 {
		t.Fatalf("retry at once: %d %s (Retry-After %q), want 409 IDEMPOTENCY_KEY_IN_USE", resp.StatusCode, b, resp.Header.Get("Retry-After"))
	}
	// Once the lease has passed, a retry asks the call manager, which is still at it.
	asked := len(h.calls.requestIDs())
	testenv.Eventually(t, 10*time.Second, "a retry forwarded to the call manager", func() bool {
		resp, b = h.do("POST", "/v1.0/calls", c.token, body, "Idempotency-Key", key)
		if resp.StatusCode != 409 || decodeError(t, b).Reason != "IDEMPOTENCY_KEY_IN_USE" {
			t.Fatalf("retry while the call manager works: %d %s, want 409 IDEMPOTENCY_KEY_IN_USE", resp.StatusCode, b)
		}
		return len(h.calls.requestIDs()) > asked
	})
	if got := retryAfter(t, resp.Header.Get("Retry-After")); got != 2 {
		t.Fatalf("Retry-After = %d, want 2 (the call manager's 1.5 s, rounded up)", got)
	}
	if n := h.calls.createCount(); n != 0 {
		t.Fatalf("%d creates finished while the first is held", n)
	}

	release.Do(func() { close(slow) }) // the call manager finishes the first request
	var first []byte
	testenv.Eventually(t, 10*time.Second, "the first outcome", func() bool {
		resp, b = h.do("POST", "/v1.0/calls", c.token, body, "Idempotency-Key", key)
		if resp.StatusCode == 409 && decodeError(t, b).Reason == "IDEMPOTENCY_KEY_IN_USE" {
			return false
		}
		if resp.StatusCode != 201 {
			t.Fatalf("retry after the call manager finished: %d %s, want 201", resp.StatusCode, b)
		}
		first = b
		return true
	})
	created := decodeJSON[createdCalls](t, first)
	if len(created.Calls) != 1 || created.Calls[0].ID == "" {
		t.Fatalf("outcome = %s", first)
	}
	for range 3 {
		resp, b = h.do("POST", "/v1.0/calls", c.token, body, "Idempotency-Key", key)
		if resp.StatusCode != 201 || string(b) != string(first) || resp.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("replay: %d %s, want 201 %s", resp.StatusCode, b, first)
		}
	}
	if n := h.calls.createCount(); n != 1 {
		t.Fatalf("the call manager placed %d sets of calls for one key, want 1", n)
	}
}

// If the gateway lost its record (Redis flushed), the call manager still knows the key: a retry
// gets the calls of the first request, not new ones.
func TestCreateRetriedAfterTheGatewayLostItsRecordGetsTheFirstCalls(t *testing.T) {
	h := newHarness(t, options{})
	c := h.newCustomer("acme")
	key := "order-" + uuid.NewString()
	first := h.must(201, "POST", "/v1.0/calls", c.token, callBody("+15557654321"), "Idempotency-Key", key)
	keys, _ := h.rdb.Keys(t.Context(), h.prefix+"idem:*").Result()
	if len(keys) == 0 {
		t.Fatal("no idempotency record stored")
	}
	h.rdb.Del(t.Context(), keys...)
	again := h.must(201, "POST", "/v1.0/calls", c.token, callBody("+15557654321"), "Idempotency-Key", key)
	if decodeJSON[createdCalls](t, again).Calls[0].ID != decodeJSON[createdCalls](t, first).Calls[0].ID {
		t.Fatalf("after the gateway lost its record: %s, want the calls of %s", again, first)
	}
	if n := h.calls.createCount(); n != 1 {
		t.Fatalf("%d sets of calls placed, want 1", n)
	}
	h.expectError(409, "IDEMPOTENCY_KEY_REUSED", "POST", "/v1.0/calls", c.token, callBody("+15550000001"), "Idempotency-Key", key)
}

func retryAfter(t *testing.T, v string) int {
	t.Helper()
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("Retry-After %q is not whole seconds", v)
	}
	return n
}
