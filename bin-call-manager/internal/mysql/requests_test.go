package mysql_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-call-manager/internal/call"
)

// The idempotency records against MariaDB: one per customer and key, and every change fenced by
// the attempt that owns it.
func TestRequests(t *testing.T) {
	s, db := newStore(t)
	ctx := context.Background()
	customer, other := uuid.NewString(), uuid.NewString()
	a1, a2 := uuid.NewString(), uuid.NewString()
	ids := []string{uuid.NewString()}
	lease := time.Now().Add(time.Minute).UTC().Truncate(time.Microsecond)
	r := &call.Request{CustomerID: customer, Key: "order-17", Hash: [32]byte{1}, CallIDs: ids,
		State: call.RequestPending, Attempt: a1, TMLease: lease, TMCreate: t0}

	if _, err := s.Claim(ctx, r); err != nil {
		t.Fatal(err)
	}
	prev, err := s.Claim(ctx, &call.Request{CustomerID: customer, Key: "order-17", Hash: [32]byte{2}, CallIDs: []string{uuid.NewString()},
		State: call.RequestPending, Attempt: a2, TMLease: lease, TMCreate: t0})
	if !errors.Is(err, call.ErrRequestExists) || prev.Attempt != a1 || prev.Hash != r.Hash || prev.CallIDs[0] != ids[0] ||
		prev.State != call.RequestPending || !prev.TMLease.Equal(lease) {
		t.Fatalf("second Claim = %+v, %v; want the first and ErrRequestExists", prev, err)
	}
	// Another customer's key of the same name is another record.
	if _, err := s.Claim(ctx, &call.Request{CustomerID: other, Key: "order-17", Hash: [32]byte{1}, CallIDs: ids,
		State: call.RequestPending, Attempt: a2, TMLease: lease, TMCreate: t0}); err != nil {
		t.Fatalf("another customer's Claim: %v", err)
	}

	// Taken over from a1 by a2: a1 can neither commit nor forget it any more.
	if ok, err := s.TakeOver(ctx, customer, "order-17", a1, a2, lease); !ok || err != nil {
		t.Fatalf("TakeOver = %v, %v", ok, err)
	}
	if ok, _ := s.TakeOver(ctx, customer, "order-17", a1, uuid.NewString(), lease); ok {
		t.Fatal("a second take-over from a1 succeeded")
	}
	c := newCall(customer, t0)
	c.ID = ids[0]
	if _, err := s.Commit(ctx, customer, "order-17", a1, []*call.Call{c}); !errors.Is(err, call.ErrAttemptLost) {
		t.Fatalf("Commit by the old attempt = %v, want ErrAttemptLost", err)
	}
	if ok, _ := s.Forget(ctx, customer, "order-17", a1); ok {
		t.Fatal("the old attempt forgot the record")
	}
	if _, err := s.Get(ctx, ids[0]); !errors.Is(err, call.ErrNotFound) {
		t.Fatalf("a fenced commit wrote the call: %v", err)
	}

	// The owner commits: the call, its event and the record's state in one transaction.
	evs, err := s.Commit(ctx, customer, "order-17", a2, []*call.Call{c})
	if err != nil || len(evs) != 1 {
		t.Fatalf("Commit = %v, %v", evs, err)
	}
	got, err := s.Lookup(ctx, customer, "order-17")
	if err != nil || got.State != call.RequestCreated || got.Attempt != a2 {
		t.Fatalf("Lookup after the commit = %+v, %v", got, err)
	}
	if _, err := s.Get(ctx, ids[0]); err != nil {
		t.Fatalf("the committed call: %v", err)
	}
	if ok, _ := s.Forget(ctx, customer, "order-17", a2); ok {
		t.Fatal("a created record was forgotten")
	}
	if ok, _ := s.TakeOver(ctx, customer, "order-17", a2, uuid.NewString(), lease); ok {
		t.Fatal("a created record was taken over")
	}

	// A pending record its owner forgets is gone.
	if ok, err := s.Forget(ctx, other, "order-17", a2); !ok || err != nil {
		t.Fatalf("Forget = %v, %v", ok, err)
	}
	if _, err := s.Lookup(ctx, other, "order-17"); !errors.Is(err, call.ErrNotFound) {
		t.Fatalf("Lookup after Forget = %v, want ErrNotFound", err)
	}

	// Purge takes what is older than its cut-off, nothing else.
	if _, err := db.Exec("UPDATE call_requests SET tm_create = ?", time.Now().Add(-26*time.Hour).UTC()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, &call.Request{CustomerID: other, Key: "fresh", Hash: [32]byte{3}, CallIDs: ids,
		State: call.RequestPending, Attempt: a1, TMLease: lease, TMCreate: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PurgeRequests(ctx, time.Now().Add(-call.RequestRetention), 100); n != 1 || err != nil {
		t.Fatalf("PurgeRequests = %d, %v; want 1", n, err)
	}
	if _, err := s.Lookup(ctx, other, "fresh"); err != nil {
		t.Fatalf("the fresh record was purged: %v", err)
	}
}
