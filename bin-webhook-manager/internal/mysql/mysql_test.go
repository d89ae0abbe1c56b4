package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-webhook-manager/internal/webhook"
	"voipbin/bin-webhook-manager/migrations"
	"voipbin/pkg/migrate"
	"voipbin/pkg/testenv"
)

func newDB(t *testing.T) *sql.DB {
	t.Helper()
	db := testenv.MySQL(t)
	if _, err := migrate.Up(context.Background(), db, migrations.FS, "webhook", testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	return db
}

func newWebhook(t *testing.T, s *WebhookStore, customer string, types ...string) webhook.Webhook {
	t.Helper()
	secret, _ := webhook.NewSecret()
	now := time.Now().UTC().Truncate(time.Microsecond)
	w := webhook.Webhook{ID: uuid.NewString(), CustomerID: customer, Name: "n", URI: "https://example.com/h", Method: "POST",
		EventTypes: types, Status: webhook.StatusEnabled, Secret: secret, TMCreate: now, TMUpdate: now}
	if err := s.Create(context.Background(), w); err != nil {
		t.Fatal(err)
	}
	return w
}

func TestWebhookStore(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	s := NewWebhookStore(db)
	c1, c2 := uuid.NewString(), uuid.NewString()
	w1 := newWebhook(t, s, c1, "call.*")
	w2 := newWebhook(t, s, c1, "*")
	w3 := newWebhook(t, s, c2, "call.ended")

	got, err := s.Get(ctx, c1, w1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Secret.Reveal() != w1.Secret.Reveal() || got.URI != w1.URI || len(got.EventTypes) != 1 || got.EventTypes[0] != "call.*" ||
		!got.TMCreate.Equal(w1.TMCreate) || got.CustomerID != c1 {
		t.Fatalf("Get = %+v, want %+v", got, w1)
	}
	if _, err := s.Get(ctx, "", w1.ID); err != nil {
		t.Fatalf("Get with any customer: %v", err)
	}
	for _, tc := range []struct{ customer, id string }{{c2, w1.ID}, {c1, uuid.NewString()}, {c1, "not-a-uuid"}, {"garbage", w1.ID}} {
		if _, err := s.Get(ctx, tc.customer, tc.id); !errors.Is(err, webhook.ErrNotFound) {
			t.Fatalf("Get(%s, %s) = %v, want ErrNotFound", tc.customer, tc.id, err)
		}
	}

	list, err := s.List(ctx, c1)
	if err != nil || len(list) != 2 || list[0].ID != w2.ID || list[1].ID != w1.ID {
		t.Fatalf("List(c1) = %v, %v; want w2, w1", ids(list), err)
	}
	if all, _ := s.List(ctx, ""); len(all) < 3 {
		t.Fatalf("List(any) = %d webhooks", len(all))
	}

	upd, err := s.Update(ctx, c1, w1.ID, func(w *webhook.Webhook) error {
		w.URI, w.Status, w.EventTypes = "https://example.org/new", webhook.StatusDisabled, []string{"billing.*", "call.ended"}
		return nil
	})
	if err != nil || upd.URI != "https://example.org/new" {
		t.Fatalf("Update = %+v, %v", upd, err)
	}
	if got, _ := s.Get(ctx, c1, w1.ID); got.Status != webhook.StatusDisabled || len(got.EventTypes) != 2 || got.Secret.Reveal() != w1.Secret.Reveal() {
		t.Fatalf("after Update: %+v", got)
	}
	if _, err := s.Update(ctx, c2, w1.ID, func(*webhook.Webhook) error { return nil }); !errors.Is(err, webhook.ErrNotFound) {
		t.Fatalf("Update of another customer's webhook = %v", err)
	}
	boom := errors.New("boom")
	if _, err := s.Update(ctx, c1, w2.ID, func(w *webhook.Webhook) error { w.Name = "changed"; return boom }); !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want the callback's error", err)
	}
	if got, _ := s.Get(ctx, c1, w2.ID); got.Name != "n" {
		t.Fatalf("a failed Update saved: %+v", got)
	}

	if en, _ := s.EnabledWebhooks(ctx, c1); len(en) != 1 || en[0].ID != w2.ID {
		t.Fatalf("EnabledWebhooks(c1) = %v, want w2 only", ids(en))
	}
	if en, err := s.EnabledWebhooks(ctx, "not-a-uuid"); err != nil || len(en) != 0 {
		t.Fatalf("EnabledWebhooks(garbage) = %v, %v", en, err)
	}

	// Delete hides the webhook and fails its pending deliveries.
	ds := NewDeliveryStore(db)
	d := delivery(w3, uuid.NewString(), "call-1", 1)
	if _, err := ds.AddDeliveries(ctx, []webhook.Delivery{d}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete(ctx, c1, w3.ID); !errors.Is(err, webhook.ErrNotFound) {
		t.Fatalf("Delete of another customer's webhook = %v", err)
	}
	if _, err := s.Delete(ctx, c2, w3.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, c2, w3.ID); !errors.Is(err, webhook.ErrNotFound) {
		t.Fatalf("Get after Delete = %v", err)
	}
	if got, _ := ds.Delivery(ctx, w3.ID, d.ID); got.Status != webhook.DeliveryFailed {
		t.Fatalf("pending delivery of a deleted webhook is %s", got.Status)
	}
}

func ids(ws []webhook.Webhook) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.ID)
	}
	return out
}

func delivery(w webhook.Webhook, eventID, resource string, seq int64) webhook.Delivery {
	now := time.Now().UTC().Truncate(time.Microsecond)
	return webhook.Delivery{ID: uuid.NewString(), WebhookID: w.ID, CustomerID: w.CustomerID, EventID: eventID, EventType: "call.updated",
		ResourceID: resource, Sequence: seq, EventTime: now, Payload: []byte(fmt.Sprintf(`{"sequence":%d}`, seq)),
		Status: webhook.DeliveryPending, NextAttempt: now, TMCreate: now}
}

func TestAddDeliveriesIsIdempotentPerWebhookAndEvent(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	w := newWebhook(t, NewWebhookStore(db), uuid.NewString(), "*")
	s := NewDeliveryStore(db)
	ev := uuid.NewString()
	for i, want := range []int{1, 0} {
		if n, err := s.AddDeliveries(ctx, []webhook.Delivery{delivery(w, ev, "r", 1)}); err != nil || n != want {
			t.Fatalf("insert %d: AddDeliveries = %d, %v; want %d", i, n, err, want)
		}
	}
	if _, err := s.AddDeliveries(ctx, []webhook.Delivery{delivery(w, "not-a-uuid", "r", 1)}); err == nil {
		t.Fatal("AddDeliveries took an event id that is not a UUID")
	}
	long := delivery(w, uuid.NewString(), "r", 2)
	long.EventType = string(make([]byte, 300))
	if _, err := s.AddDeliveries(ctx, []webhook.Delivery{long}); err == nil {
		t.Fatal("an event type too long for its column was accepted (truncated?)")
	}
}

func claimIDs(cs []webhook.Claim) map[string]bool {
	out := map[string]bool{}
	for _, c := range cs {
		out[c.ID] = true
	}
	return out
}

func TestClaimTakesOnlyTheHeadOfEachChain(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	hooks := NewWebhookStore(db)
	customer := uuid.NewString()
	w := newWebhook(t, hooks, customer, "*")
	other := newWebhook(t, hooks, customer, "*")
	s := NewDeliveryStore(db)
	a1, a2, a3 := delivery(w, uuid.NewString(), "call-a", 1), delivery(w, uuid.NewString(), "call-a", 2), delivery(w, uuid.NewString(), "call-a", 3)
	b1 := delivery(w, uuid.NewString(), "call-b", 1)
	o2 := delivery(other, a2.EventID, "call-a", 2) // another webhook's chain of the same call
	// Inserted out of order: the chain is ordered by sequence, not by insertion.
	if _, err := s.AddDeliveries(ctx, []webhook.Delivery{a3, a2, b1, a1, o2}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	lease := time.Minute
	got, err := s.Claim(ctx, now, 10, lease)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]bool{a1.ID: true, b1.ID: true, o2.ID: true}; fmt.Sprint(claimIDs(got)) != fmt.Sprint(want) {
		t.Fatalf("first claim = %v, want a1, b1 and o2", claimIDs(got))
	}
	for _, c := range got {
		if c.Webhook.URI == "" || c.Webhook.Secret.Reveal() == "" || len(c.Payload) == 0 || c.Token == "" {
			t.Fatalf("claim lacks what sending needs: %+v", c)
		}
	}
	if again, _ := s.Claim(ctx, now, 10, lease); len(again) != 0 {
		t.Fatalf("leased heads or their successors were claimed again: %v", claimIDs(again))
	}

	var headA webhook.Claim
	for _, c := range got {
		if c.ID == a1.ID {
			headA = c
			continue
		}
		if err := s.Record(ctx, []webhook.Recorded{{Claim: c, Attempt: webhook.Attempt{At: now, HTTPStatus: 200}, Decision: webhook.Decision{Status: webhook.DeliverySucceeded}}}); err != nil {
			t.Fatal(err)
		}
	}
	// A retry keeps the head pending: the chain stays blocked, and its successors wait with it.
	next := now.Add(time.Hour)
	if err := s.Record(ctx, []webhook.Recorded{{Claim: headA, Attempt: webhook.Attempt{At: now, HTTPStatus: 500}, Decision: webhook.Decision{Status: webhook.DeliveryPending, NextAttempt: next}}}); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Claim(ctx, now.Add(time.Second), 10, lease); len(c) != 0 {
		t.Fatalf("claimed %v while the chain's head waits for its retry", claimIDs(c))
	}
	if d, _ := s.Delivery(ctx, w.ID, a2.ID); !d.NextAttempt.Equal(next) {
		t.Fatalf("successor's next attempt %s, want it postponed to %s", d.NextAttempt, next)
	}
	// Due again: the head is claimed, then settled, then its successor comes.
	c, _ := s.Claim(ctx, next, 10, lease)
	if len(c) != 1 || c[0].ID != a1.ID || c[0].WindowAttempts != 1 {
		t.Fatalf("claim at the retry time = %+v, want a1 with one attempt in its window", c)
	}
	if err := s.Record(ctx, []webhook.Recorded{{Claim: c[0], Attempt: webhook.Attempt{At: next, HTTPStatus: 200}, Decision: webhook.Decision{Status: webhook.DeliverySucceeded}}}); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Claim(ctx, next, 10, lease); len(c) != 1 || c[0].ID != a2.ID {
		t.Fatalf("after the head succeeded, claim = %v, want a2", claimIDs(c))
	}

	// A lease that ends unrecorded (a dispatcher died) lets another claim the delivery.
	if c, _ := s.Claim(ctx, next.Add(lease+time.Second), 10, lease); len(c) != 1 || c[0].ID != a2.ID {
		t.Fatalf("after the lease ended, claim = %v, want a2 again", claimIDs(c))
	} else {
		// The first claimer's late record must not overwrite the second's lease.
		stale := webhook.Claim{Delivery: a2, Token: uuid.NewString()}
		if err := s.Record(ctx, []webhook.Recorded{{Claim: stale, Attempt: webhook.Attempt{At: next, HTTPStatus: 200}, Decision: webhook.Decision{Status: webhook.DeliverySucceeded}}}); err != nil {
			t.Fatal(err)
		}
		if d, _ := s.Delivery(ctx, w.ID, a2.ID); d.Status != webhook.DeliveryPending || len(d.Attempts) != 1 {
			t.Fatalf("a stale record changed the delivery: %+v", d)
		}
	}

	// A disabled webhook's deliveries are not claimed.
	if _, err := hooks.Update(ctx, "", other.ID, func(w *webhook.Webhook) error { w.Status = webhook.StatusDisabled; return nil }); err != nil {
		t.Fatal(err)
	}
	o3 := delivery(other, uuid.NewString(), "call-z", 1)
	if _, err := s.AddDeliveries(ctx, []webhook.Delivery{o3}); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Claim(ctx, next.Add(3*lease), 10, lease); claimIDs(c)[o3.ID] {
		t.Fatal("a disabled webhook's delivery was claimed")
	}
}

// Several dispatchers claiming at once never take the same delivery, and each chain is settled in
// sequence order.
func TestConcurrentClaimersKeepChainsInOrder(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	w := newWebhook(t, NewWebhookStore(db), uuid.NewString(), "*")
	s := NewDeliveryStore(db)
	const chains, perChain, claimers = 8, 6, 4
	var all []webhook.Delivery
	for seq := 1; seq <= perChain; seq++ {
		for c := range chains {
			all = append(all, delivery(w, uuid.NewString(), fmt.Sprintf("call-%d", c), int64(seq)))
		}
	}
	if _, err := s.AddDeliveries(ctx, all); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	settled := map[string][]int64{} // chain -> sequences in the order they were settled
	claimedBy := map[string]int{}
	var wg sync.WaitGroup
	errc := make(chan error, claimers)
	deadline := time.Now().Add(30 * time.Second)
	for i := range claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				mu.Lock()
				done := len(claimedBy) == len(all)
				mu.Unlock()
				if done {
					return
				}
				cs, err := s.Claim(ctx, time.Now().UTC(), 3, time.Minute)
				if err != nil {
					errc <- err
					return
				}
				for _, c := range cs {
					mu.Lock()
					claimedBy[c.ID]++
					if claimedBy[c.ID] > 1 {
						errc <- fmt.Errorf("delivery %s claimed twice (claimer %d)", c.ID, i)
					}
					settled[c.ResourceID] = append(settled[c.ResourceID], c.Sequence)
					mu.Unlock()
					if err := s.Record(ctx, []webhook.Recorded{{Claim: c, Attempt: webhook.Attempt{At: time.Now(), HTTPStatus: 200}, Decision: webhook.Decision{Status: webhook.DeliverySucceeded}}}); err != nil {
						errc <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if len(claimedBy) != len(all) {
		t.Fatalf("%d of %d deliveries claimed before the deadline", len(claimedBy), len(all))
	}
	for chain, seqs := range settled {
		for i, seq := range seqs {
			if seq != int64(i+1) {
				t.Fatalf("chain %s settled in order %v", chain, seqs)
			}
		}
	}
}

func TestDeliveryLogPagingRetryAndBacklog(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	w := newWebhook(t, NewWebhookStore(db), uuid.NewString(), "*")
	s := NewDeliveryStore(db)
	var added []webhook.Delivery
	for i := range 5 {
		d := delivery(w, uuid.NewString(), fmt.Sprintf("r%d", i), 1)
		d.TMCreate = d.TMCreate.Add(time.Duration(i) * time.Millisecond)
		added = append(added, d)
	}
	if _, err := s.AddDeliveries(ctx, added); err != nil {
		t.Fatal(err)
	}
	if n, oldest, err := s.Backlog(ctx); err != nil || n != 5 || !oldest.Equal(added[0].TMCreate) {
		t.Fatalf("Backlog = %d, %s, %v; want 5 and the first creation %s", n, oldest, err, added[0].TMCreate)
	}

	// One attempt on each, recorded in one batch, so the log has something to show.
	c, _ := s.Claim(ctx, time.Now().UTC(), 5, time.Minute)
	var rs []webhook.Recorded
	for _, cl := range c {
		rs = append(rs, webhook.Recorded{Claim: cl, Decision: webhook.Decision{Status: webhook.DeliveryFailed},
			Attempt: webhook.Attempt{At: time.Now().UTC(), HTTPStatus: 404, Latency: 12 * time.Millisecond, Response: []byte("no such hook")}})
	}
	if len(rs) != 5 {
		t.Fatalf("claimed %d, want 5", len(rs))
	}
	if err := s.Record(ctx, rs); err != nil {
		t.Fatal(err)
	}
	var seen []string
	token := ""
	for page := 0; ; page++ {
		ds, next, err := s.Deliveries(ctx, w.ID, 2, token)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			seen = append(seen, d.ID)
			if len(d.Attempts) != 1 || d.Attempts[0].HTTPStatus != 404 || string(d.Attempts[0].Response) != "no such hook" ||
				d.Attempts[0].Latency != 12*time.Millisecond || d.Status != webhook.DeliveryFailed {
				t.Fatalf("delivery %+v lacks its attempt", d)
			}
		}
		if next == "" {
			break
		}
		token = next
		if page > 5 {
			t.Fatal("paging does not end")
		}
	}
	if len(seen) != 5 || seen[0] != added[4].ID || seen[4] != added[0].ID {
		t.Fatalf("pages gave %v, want the 5 deliveries newest first", seen)
	}
	var fe *webhook.FieldError
	if _, _, err := s.Deliveries(ctx, w.ID, 2, "garbage!"); !errors.As(err, &fe) {
		t.Fatalf("bad page token: %v", err)
	}
	if n, _, _ := s.Backlog(ctx); n != 0 {
		t.Fatalf("backlog %d after every delivery failed", n)
	}

	// Retry brings a failed delivery back, due now, with a fresh window.
	now := time.Now().UTC().Truncate(time.Microsecond)
	d, err := s.Retry(ctx, w.ID, added[2].ID, now)
	if err != nil || d.Status != webhook.DeliveryPending || !d.NextAttempt.Equal(now) || len(d.Attempts) != 1 {
		t.Fatalf("Retry = %+v, %v", d, err)
	}
	c, _ = s.Claim(ctx, now, 5, time.Minute)
	if len(c) != 1 || c[0].ID != added[2].ID || c[0].WindowAttempts != 0 || !c[0].WindowStart.Equal(now) {
		t.Fatalf("claim after retry = %+v", c)
	}
	if _, err := s.Retry(ctx, w.ID, uuid.NewString(), now); !errors.Is(err, webhook.ErrDeliveryNotFound) {
		t.Fatalf("Retry of a missing delivery = %v", err)
	}
	if _, err := s.Retry(ctx, uuid.NewString(), added[2].ID, now); !errors.Is(err, webhook.ErrDeliveryNotFound) {
		t.Fatalf("Retry through another webhook = %v", err)
	}
}

// Disabling a webhook pauses its waiting deliveries: they are neither claimed nor counted in the
// backlog, still read as pending, and resume when it is enabled again.
func TestDisablePausesAndEnableResumes(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	hooks := NewWebhookStore(db)
	w := newWebhook(t, hooks, uuid.NewString(), "*")
	s := NewDeliveryStore(db)
	d := delivery(w, uuid.NewString(), "call-1", 1)
	if _, err := s.AddDeliveries(ctx, []webhook.Delivery{d}); err != nil {
		t.Fatal(err)
	}
	setStatus := func(status string) {
		t.Helper()
		if _, err := hooks.Update(ctx, "", w.ID, func(w *webhook.Webhook) error { w.Status = status; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	setStatus(webhook.StatusDisabled)
	now := time.Now().UTC()
	if c, _ := s.Claim(ctx, now, 10, time.Minute); len(c) != 0 {
		t.Fatalf("claimed %v of a disabled webhook", claimIDs(c))
	}
	if n, _, _ := s.Backlog(ctx); n != 0 {
		t.Fatalf("backlog %d counts a disabled webhook's deliveries", n)
	}
	if got, _ := s.Delivery(ctx, w.ID, d.ID); got.Status != webhook.DeliveryPending {
		t.Fatalf("paused delivery reads as %q, want pending", got.Status)
	}
	setStatus(webhook.StatusEnabled)
	if c, _ := s.Claim(ctx, now, 10, time.Minute); len(c) != 1 || c[0].ID != d.ID {
		t.Fatalf("after enabling, claim = %v, want the delivery", claimIDs(c))
	}
}

// A 410 recorded by the dispatcher disables the webhook and pauses the rest of its deliveries.
func TestRecordGoneDisablesTheWebhook(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	hooks := NewWebhookStore(db)
	w := newWebhook(t, hooks, uuid.NewString(), "*")
	s := NewDeliveryStore(db)
	d1, d2 := delivery(w, uuid.NewString(), "call-1", 1), delivery(w, uuid.NewString(), "call-2", 1)
	if _, err := s.AddDeliveries(ctx, []webhook.Delivery{d1, d2}); err != nil {
		t.Fatal(err)
	}
	c, _ := s.Claim(ctx, time.Now().UTC(), 1, time.Minute)
	if len(c) != 1 {
		t.Fatal("nothing claimed")
	}
	if err := s.Record(ctx, []webhook.Recorded{{Claim: c[0], Attempt: webhook.Attempt{At: time.Now(), HTTPStatus: 410}, Decision: webhook.Decision{Status: webhook.DeliveryFailed, Disable: true}}}); err != nil {
		t.Fatal(err)
	}
	if got, _ := hooks.Get(ctx, "", w.ID); got.Status != webhook.StatusDisabled {
		t.Fatalf("webhook is %s after a 410", got.Status)
	}
	if n, _, _ := s.Backlog(ctx); n != 0 {
		t.Fatalf("backlog %d after the webhook was disabled", n)
	}
}

// A head retried by hand and settled early releases the followers it had postponed.
func TestSettlingAHeadEarlyReleasesItsChain(t *testing.T) {
	ctx := context.Background()
	db := newDB(t)
	w := newWebhook(t, NewWebhookStore(db), uuid.NewString(), "*")
	s := NewDeliveryStore(db)
	d1, d2 := delivery(w, uuid.NewString(), "call-1", 1), delivery(w, uuid.NewString(), "call-1", 2)
	if _, err := s.AddDeliveries(ctx, []webhook.Delivery{d1, d2}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	c, _ := s.Claim(ctx, now, 10, time.Minute)
	if len(c) != 1 || c[0].ID != d1.ID {
		t.Fatalf("claim = %v, want d1", claimIDs(c))
	}
	if err := s.Record(ctx, []webhook.Recorded{{Claim: c[0], Attempt: webhook.Attempt{At: now, HTTPStatus: 503}, Decision: webhook.Decision{Status: webhook.DeliveryPending, NextAttempt: now.Add(4 * time.Hour)}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Retry(ctx, w.ID, d1.ID, now); err != nil {
		t.Fatal(err)
	}
	c, _ = s.Claim(ctx, now, 10, time.Minute)
	if len(c) != 1 || c[0].ID != d1.ID {
		t.Fatalf("claim after the manual retry = %v, want d1", claimIDs(c))
	}
	if err := s.Record(ctx, []webhook.Recorded{{Claim: c[0], Attempt: webhook.Attempt{At: now, HTTPStatus: 200}, Decision: webhook.Decision{Status: webhook.DeliverySucceeded}}}); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Claim(ctx, time.Now().UTC(), 10, time.Minute); len(c) != 1 || c[0].ID != d2.ID {
		t.Fatalf("claim after the head succeeded = %v, want d2 at once, not in four hours", claimIDs(c))
	}
}
