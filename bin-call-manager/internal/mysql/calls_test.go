package mysql_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-call-manager/internal/call"
	"voipbin/bin-call-manager/internal/mysql"
	"voipbin/bin-call-manager/migrations"
	"voipbin/pkg/callapi"
	"voipbin/pkg/event"
	"voipbin/pkg/migrate"
	"voipbin/pkg/testenv"
)

func newStore(t *testing.T) (*mysql.CallStore, *sql.DB) {
	t.Helper()
	db := testenv.MySQL(t)
	if _, err := migrate.Up(context.Background(), db, migrations.FS, "call", testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	return mysql.NewCallStore(db), db
}

var t0 = time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)

func newCall(customer string, at time.Time) *call.Call {
	return call.New(call.NewParams{ID: uuid.NewString(), CustomerID: customer,
		Source:      callapi.Address{Type: "tel", Target: "+15550000001", Name: "Alice"},
		Destination: callapi.Address{Type: "sip", Target: "bob@example.com:5070", TargetName: "Bob"},
		Metadata:    map[string]any{"order": "A-17", "n": 3.0},
		DialTimeout: 45 * time.Second, Deadline: at.Add(2 * time.Hour), FirstCheck: at.Add(30 * time.Second)}, at)
}

type outboxRow struct {
	Key string
	Env event.Event
}

func outbox(t *testing.T, db *sql.DB) []outboxRow {
	t.Helper()
	rows, err := db.Query("SELECT exchange, routing_key, payload FROM call_outbox ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []outboxRow
	for rows.Next() {
		var ex, key string
		var payload []byte
		if err := rows.Scan(&ex, &key, &payload); err != nil {
			t.Fatal(err)
		}
		if ex != event.ExchangeCall {
			t.Fatalf("outbox exchange %q, want %q", ex, event.ExchangeCall)
		}
		var ev event.Event
		if err := json.Unmarshal(payload, &ev); err != nil {
			t.Fatal(err)
		}
		out = append(out, outboxRow{Key: key, Env: ev})
	}
	return out
}

func TestCreateGetRoundTripWithCreatedEvent(t *testing.T) {
	store, db := newStore(t)
	ctx := context.Background()
	customer := uuid.NewString()
	c := newCall(customer, t0.Add(123456*time.Microsecond))
	want := *c
	evs, err := store.Create(ctx, []*call.Call{c})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Type != callapi.EventCreated || evs[0].Sequence != 1 {
		t.Fatalf("events = %+v, want one call.created with sequence 1", evs)
	}
	got, err := store.Get(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	want.Version = 1
	want.TakeEvents()
	if !reflect.DeepEqual(*got, want) {
		t.Fatalf("Get = %+v\nwant  %+v", *got, want)
	}

	rows := outbox(t, db)
	if len(rows) != 1 {
		t.Fatalf("outbox has %d rows, want 1", len(rows))
	}
	env := rows[0].Env
	if rows[0].Key != event.RoutingKey(customer, callapi.EventCreated) || env.EventID != evs[0].ID ||
		env.ResourceType != "call" || env.ResourceID != c.ID || env.CustomerID != customer || env.Sequence != 1 {
		t.Fatalf("outbox row %+v does not match the call", rows[0])
	}
	var data callapi.EventData
	if err := json.Unmarshal(env.Data, &data); err != nil {
		t.Fatal(err)
	}
	if data.CallID != c.ID || data.ID != c.ID || data.Status != callapi.StatusDialing || data.Destination != c.Destination {
		t.Fatalf("event data = %+v", data)
	}

	if _, err := store.Get(ctx, uuid.NewString()); !errors.Is(err, call.ErrNotFound) {
		t.Fatalf("Get(missing) = %v, want ErrNotFound", err)
	}
}

func TestUpdateWritesRowAndEventOrNothing(t *testing.T) {
	store, db := newStore(t)
	ctx := context.Background()
	c := newCall(uuid.NewString(), t0)
	if _, err := store.Create(ctx, []*call.Call{c}); err != nil {
		t.Fatal(err)
	}

	got, evs, err := store.Update(ctx, c.ID, func(c *call.Call) error {
		c.NodeID = "node-1"
		c.Ringing(t0.Add(time.Second), t0.Add(time.Second))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 2 || got.Sequence != 2 || len(evs) != 1 || evs[0].Type != callapi.EventRinging {
		t.Fatalf("after ringing: version %d, sequence %d, events %+v", got.Version, got.Sequence, evs)
	}
	reread, _ := store.Get(ctx, c.ID)
	if reread.Status != callapi.StatusRinging || reread.NodeID != "node-1" || reread.TMRinging == nil || !reread.TMRinging.Equal(t0.Add(time.Second)) {
		t.Fatalf("reread = %+v", reread)
	}

	// Unchanged: nothing written.
	got, evs, err = store.Update(ctx, c.ID, func(c *call.Call) error {
		if c.Ringing(t0, t0) {
			t.Error("duplicate ringing moved the call")
		}
		return call.ErrUnchanged
	})
	if err != nil || got.Version != 2 || evs != nil {
		t.Fatalf("unchanged update = version %d, events %v, %v", got.Version, evs, err)
	}

	// An error rolls back what fn did.
	boom := errors.New("boom")
	_, _, err = store.Update(ctx, c.ID, func(c *call.Call) error {
		c.Answer(t0, t0)
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update error = %v, want boom", err)
	}
	reread, _ = store.Get(ctx, c.ID)
	if reread.Status != callapi.StatusRinging || reread.Version != 2 {
		t.Fatalf("after a failed update: %s v%d, want ringing v2", reread.Status, reread.Version)
	}
	if n := len(outbox(t, db)); n != 2 {
		t.Fatalf("outbox has %d rows, want 2 (created, ringing)", n)
	}

	if _, _, err := store.Update(ctx, uuid.NewString(), func(*call.Call) error { return nil }); !errors.Is(err, call.ErrNotFound) {
		t.Fatalf("Update(missing) = %v, want ErrNotFound", err)
	}
}

func TestConcurrentUpdatesSerialize(t *testing.T) {
	store, db := newStore(t)
	ctx := context.Background()
	c := newCall(uuid.NewString(), t0)
	if _, err := store.Create(ctx, []*call.Call{c}); err != nil {
		t.Fatal(err)
	}
	// Every goroutine tries the whole lifecycle; the row lock lets each transition happen once.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			at := t0.Add(time.Duration(i) * time.Millisecond)
			for _, step := range []func(*call.Call) bool{
				func(c *call.Call) bool { return c.Ringing(at, at) },
				func(c *call.Call) bool { return c.Answer(at, at) },
				func(c *call.Call) bool { return c.End(call.Ending{Cause: 16}, at) },
			} {
				_, _, err := store.Update(ctx, c.ID, func(c *call.Call) error {
					if !step(c) {
						return call.ErrUnchanged
					}
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	var seqs []int64
	for _, r := range outbox(t, db) {
		seqs = append(seqs, r.Env.Sequence)
	}
	if !reflect.DeepEqual(seqs, []int64{1, 2, 3, 4}) {
		t.Fatalf("event sequences = %v, want [1 2 3 4]", seqs)
	}
	got, _ := store.Get(ctx, c.ID)
	if got.Status != callapi.StatusHangup || got.Sequence != 4 || got.Version != 4 {
		t.Fatalf("final = %s seq %d v%d", got.Status, got.Sequence, got.Version)
	}
}

func ids(calls []*call.Call) []string {
	var out []string
	for _, c := range calls {
		out = append(out, c.ID)
	}
	return out
}

func TestListFiltersAndPages(t *testing.T) {
	store, _ := newStore(t)
	ctx := context.Background()
	a, b := uuid.NewString(), uuid.NewString()
	var all []*call.Call
	for i := range 9 {
		// Three share a timestamp, so the id breaks the tie.
		at := t0.Add(time.Duration(min(i, 6)) * time.Second)
		customer := a
		if i%3 == 2 {
			customer = b
		}
		c := newCall(customer, at)
		if _, err := store.Create(ctx, []*call.Call{c}); err != nil {
			t.Fatal(err)
		}
		all = append(all, c)
	}
	// End one and delete another.
	if _, _, err := store.Update(ctx, all[0].ID, func(c *call.Call) error { c.End(call.Ending{SIPCode: 486}, t0); return nil }); err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.Update(ctx, all[1].ID, func(c *call.Call) error { now := t0; c.TMDelete = &now; return nil }); err != nil {
		t.Fatal(err)
	}

	everything, err := store.List(ctx, call.Filter{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(everything) != 8 {
		t.Fatalf("List all = %d calls, want 8 (one deleted)", len(everything))
	}
	for i := 1; i < len(everything); i++ {
		p, q := everything[i-1], everything[i]
		if p.TMCreate.Before(q.TMCreate) || (p.TMCreate.Equal(q.TMCreate) && p.ID < q.ID) {
			t.Fatalf("not newest first at %d: %v %s then %v %s", i, p.TMCreate, p.ID, q.TMCreate, q.ID)
		}
	}

	// Cursor pages of 3 walk everything once, in order.
	var walked []*call.Call
	f := call.Filter{Limit: 3}
	for range 10 {
		page, err := store.List(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		walked = append(walked, page...)
		if len(page) < 3 {
			break
		}
		last := page[len(page)-1]
		f.After = &call.Cursor{TMCreate: last.TMCreate, ID: last.ID}
	}
	if !reflect.DeepEqual(ids(walked), ids(everything)) {
		t.Fatalf("cursor walk = %v\nwant        %v", ids(walked), ids(everything))
	}

	// Offset paging.
	page, err := store.List(ctx, call.Filter{Limit: 2, Offset: 3})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ids(page), ids(everything[3:5])) {
		t.Fatalf("offset page = %v, want %v", ids(page), ids(everything[3:5]))
	}

	// Filters.
	tests := []struct {
		name string
		f    call.Filter
		want int
	}{
		{"customer a", call.Filter{CustomerID: a, Limit: 100}, 5},
		{"customer b", call.Filter{CustomerID: b, Limit: 100}, 3},
		{"hangup", call.Filter{Status: callapi.StatusHangup, Limit: 100}, 1},
		{"dialing of a", call.Filter{CustomerID: a, Status: callapi.StatusDialing, Limit: 100}, 4},
		{"outgoing", call.Filter{Direction: "outgoing", Limit: 100}, 8},
		{"incoming", call.Filter{Direction: "incoming", Limit: 100}, 0},
		{"unknown customer", call.Filter{CustomerID: uuid.NewString(), Limit: 100}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := store.List(ctx, tt.f)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tt.want {
				t.Fatalf("List(%+v) = %d calls, want %d", tt.f, len(got), tt.want)
			}
		})
	}
}

func TestClaimDueSkipsLockedAndEndedCalls(t *testing.T) {
	store, db := newStore(t)
	ctx := context.Background()
	customer := uuid.NewString()
	due1, due2, later, ended := newCall(customer, t0), newCall(customer, t0), newCall(customer, t0.Add(time.Hour)), newCall(customer, t0)
	if _, err := store.Create(ctx, []*call.Call{due1, due2, later, ended}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.Update(ctx, ended.ID, func(c *call.Call) error { c.End(call.Ending{Cause: 17}, t0); return nil }); err != nil {
		t.Fatal(err)
	}

	// Another instance holds due1.
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	bid, _ := uuid.MustParse(due1.ID).MarshalBinary()
	var one int
	if err := tx.QueryRow("SELECT 1 FROM call_calls WHERE id = ? FOR UPDATE", bid).Scan(&one); err != nil {
		t.Fatal(err)
	}

	now, next := t0.Add(time.Minute), t0.Add(2*time.Minute)
	got, err := store.ClaimDue(ctx, now, next, 10)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(ids(got), []string{due2.ID}) {
		t.Fatalf("claimed %v, want only %s (due1 locked, later not due, ended done)", ids(got), due2.ID)
	}
	if got[0].TMCheck == nil || !got[0].TMCheck.Equal(next) {
		t.Fatalf("claimed call's next check = %v, want %v", got[0].TMCheck, next)
	}
	again, err := store.ClaimDue(ctx, now, next, 10)
	if err != nil || len(again) != 0 {
		t.Fatalf("second claim = %v, %v; want nothing (pushed back or locked)", ids(again), err)
	}
	_ = tx.Rollback()
	// A next check beyond the deadline is brought back to the deadline.
	got, err = store.ClaimDue(ctx, now, t0.Add(3*time.Hour), 10)
	if err != nil || !reflect.DeepEqual(ids(got), []string{due1.ID}) {
		t.Fatalf("claim after release = %v, %v; want %s", ids(got), err, due1.ID)
	}
	stored, _ := store.Get(ctx, due1.ID)
	if !got[0].TMCheck.Equal(due1.TMDeadline) || !stored.TMCheck.Equal(due1.TMDeadline) {
		t.Fatalf("next check = %v (stored %v), want the deadline %v", got[0].TMCheck, stored.TMCheck, due1.TMDeadline)
	}

	if err := store.SetProbeFailures(ctx, due1.ID, 1); err != nil {
		t.Fatal(err)
	}
	c, _ := store.Get(ctx, due1.ID)
	if c.ProbeFailures != 1 || c.Version != 1 {
		t.Fatalf("probe failures %d (version %d), want 1 (version unchanged 1)", c.ProbeFailures, c.Version)
	}
}

// Two renewers (call-manager instances) never claim one call; a claimed call comes back at its
// lease if its renewer died, and SetRenewal never revives the renewal of an ended call.
func TestClaimRenewalsLeasesAndSkipsEndedCalls(t *testing.T) {
	store, _ := newStore(t)
	ctx := context.Background()
	customer := uuid.NewString()
	due, later, ended := newCall(customer, t0), newCall(customer, t0), newCall(customer, t0)
	due.Quota, later.Quota, ended.Quota = 60, 60, 60
	at, atLater := t0.Add(50*time.Second), t0.Add(time.Hour)
	due.TMRenew, later.TMRenew, ended.TMRenew = &at, &atLater, &at
	if _, err := store.Create(ctx, []*call.Call{due, later, ended}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.Update(ctx, ended.ID, func(c *call.Call) error { c.End(call.Ending{Cause: 16}, t0); return nil }); err != nil {
		t.Fatal(err)
	}

	now, lease := t0.Add(time.Minute), t0.Add(time.Minute+11*time.Second)
	var mu sync.Mutex
	var claimed []string
	var wg sync.WaitGroup
	for range 4 { // four instances at once
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := store.ClaimRenewals(ctx, now, lease, 10)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			claimed = append(claimed, ids(got)...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if !reflect.DeepEqual(claimed, []string{due.ID}) {
		t.Fatalf("claimed %v, want %s once (later not due, ended done)", claimed, due.ID)
	}
	if got, _ := store.ClaimRenewals(ctx, now.Add(10*time.Second), lease, 10); len(got) != 0 {
		t.Fatalf("claimed again within the lease: %v", ids(got))
	}
	// Its renewer died: the lease brings it back, with its quota.
	got, err := store.ClaimRenewals(ctx, lease, lease.Add(time.Minute), 10)
	if err != nil || !reflect.DeepEqual(ids(got), []string{due.ID}) || got[0].Quota != 60 {
		t.Fatalf("claim after the lease = %v, %v", ids(got), err)
	}
	next := lease.Add(time.Second)
	if err := store.SetRenewal(ctx, ended.ID, &next); err != nil {
		t.Fatal(err)
	}
	if c, _ := store.Get(ctx, ended.ID); c.TMRenew != nil {
		t.Fatalf("an ended call's renewal was set to %v", c.TMRenew)
	}
	if err := store.SetRenewal(ctx, due.ID, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := store.ClaimRenewals(ctx, t0.Add(2*time.Hour), t0.Add(3*time.Hour), 10); !reflect.DeepEqual(ids(got), []string{later.ID}) {
		t.Fatalf("claimed %v, want only %s", ids(got), later.ID)
	}
}
