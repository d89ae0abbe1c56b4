package mysql_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"voipbin/bin-billing-manager/internal/billing"
	"voipbin/bin-billing-manager/internal/mysql"
	"voipbin/bin-billing-manager/migrations"
	"voipbin/pkg/event"
	"voipbin/pkg/migrate"
	"voipbin/pkg/testenv"
)

const (
	rateTel = 20_000
	rateSIP = 5_000
)

func policy(initial int64) billing.Policy {
	return billing.Policy{Currency: "USD", InitialBalance: initial, Rates: map[string]int64{"tel": rateTel, "sip": rateSIP},
		ReservationTTL: 70 * time.Minute}
}

// clock is a settable clock for the service and the sweeper.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type env struct {
	db    *sql.DB
	store *mysql.Store
	svc   *billing.Service
	clock *clock
	kicks atomic.Int32
}

func migrated(t testing.TB) *sql.DB {
	t.Helper()
	db := testenv.MySQL(t)
	if _, err := migrate.Up(context.Background(), db, migrations.FS, "billing", testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	return db
}

func newEnv(t testing.TB, p billing.Policy) *env {
	t.Helper()
	e := &env{db: migrated(t), clock: &clock{now: time.Now().UTC()}}
	e.store = mysql.NewStore(e.db, mysql.Options{OnCommit: func() { e.kicks.Add(1) }})
	e.svc = billing.NewService(billing.Deps{Store: e.store, Reader: e.store, Policy: p, Clock: e.clock.Now})
	return e
}

// customer opens an account for a new customer and returns the customer id and account.
func (e *env) customer(t testing.TB) (string, billing.Account) {
	t.Helper()
	id := uuid.NewString()
	if created, err := e.svc.OpenAccount(context.Background(), id); err != nil || !created {
		t.Fatalf("OpenAccount = %v, %v", created, err)
	}
	page, err := e.svc.Accounts(context.Background(), billing.Query{CustomerID: id})
	if err != nil || len(page.Items) != 1 {
		t.Fatalf("Accounts = %+v, %v", page, err)
	}
	return id, page.Items[0]
}

func (e *env) account(t testing.TB, id string) billing.Account {
	t.Helper()
	a, err := e.svc.Account(context.Background(), "", id)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (e *env) count(t testing.TB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := e.db.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// outbox is every event in the outbox, in insertion order.
func (e *env) outbox(t testing.TB) []event.Event {
	t.Helper()
	rows, err := e.db.Query("SELECT exchange, routing_key, payload FROM billing_outbox ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []event.Event
	for rows.Next() {
		var exchange, key string
		var payload []byte
		if err := rows.Scan(&exchange, &key, &payload); err != nil {
			t.Fatal(err)
		}
		var ev event.Event
		if err := json.Unmarshal(payload, &ev); err != nil {
			t.Fatal(err)
		}
		if exchange != event.ExchangeBilling || key != event.RoutingKey(ev.CustomerID, ev.EventType) {
			t.Fatalf("outbox row to %s/%s", exchange, key)
		}
		out = append(out, ev)
	}
	return out
}

func bg() context.Context { return context.Background() }

func TestOpenAccountIsIdempotent(t *testing.T) {
	e := newEnv(t, policy(10_000_000))
	cus := uuid.NewString()
	for i, want := range []bool{true, false, false} {
		got, err := e.svc.OpenAccount(bg(), cus)
		if err != nil || got != want {
			t.Fatalf("OpenAccount #%d = %v, %v; want %v", i+1, got, err, want)
		}
	}
	if n := e.count(t, "SELECT COUNT(*) FROM billing_accounts"); n != 1 {
		t.Fatalf("%d accounts, want 1", n)
	}
	page, err := e.svc.Entries(bg(), billing.Query{CustomerID: cus})
	if err != nil || len(page.Items) != 1 || page.Items[0].Amount != 10_000_000 || page.Items[0].Kind != billing.KindBalanceAdd {
		t.Fatalf("ledger = %+v, %v; want the initial credit once", page, err)
	}
	evs := e.outbox(t)
	if len(evs) != 1 || evs[0].EventType != billing.EventAccountUpdated || evs[0].Sequence != 1 || evs[0].CustomerID != cus ||
		evs[0].ResourceType != "billing_account" {
		t.Fatalf("outbox = %+v, want one account_updated #1", evs)
	}
	if e.kicks.Load() != 1 {
		t.Fatalf("relay kicked %d times, want once (after the one commit with events)", e.kicks.Load())
	}
	if _, err := e.svc.OpenAccount(bg(), "not-a-uuid"); err == nil {
		t.Fatal("a bad customer id opened an account")
	}
}

func TestGateReservesAndCountsOnlyActiveReservations(t *testing.T) {
	e := newEnv(t, policy(3*rateTel))
	cus, acc := e.customer(t)
	gate := func(call string) error {
		_, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: cus, CallID: call, DestinationType: "tel"})
		return err
	}
	c1, c2, c3, c4 := uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString()
	for _, c := range []string{c1, c2, c3} {
		if err := gate(c); err != nil {
			t.Fatalf("gate within balance: %v", err)
		}
	}
	var low *billing.InsufficientBalanceError
	if err := gate(c4); !errors.As(err, &low) || low.Balance != 3*rateTel || low.Reserved != 3*rateTel || low.Required != rateTel {
		t.Fatalf("fourth gate = %v, want insufficient balance with details", err)
	}
	if a := e.account(t, acc.ID); a.Reserved != 3*rateTel || a.Available() != 0 {
		t.Fatalf("account = %+v, want all of it reserved", a)
	}
	// Asking again for a call that holds a reservation reserves nothing more.
	if err := gate(c1); err != nil {
		t.Fatalf("repeated gate: %v", err)
	}
	// A released reservation frees its money.
	if err := e.svc.Release(bg(), c1); err != nil {
		t.Fatal(err)
	}
	if err := gate(c4); err != nil {
		t.Fatalf("gate after a release: %v", err)
	}
	// An expired one too, without any sweep.
	e.clock.Advance(71 * time.Minute)
	if a := e.account(t, acc.ID); a.Reserved != 0 || a.Available() != 3*rateTel {
		t.Fatalf("after expiry account = %+v, want nothing reserved", a)
	}
	if err := gate(uuid.NewString()); err != nil {
		t.Fatalf("gate after expiry: %v", err)
	}
	// Asking again for a call whose reservation ended is refused.
	if err := gate(c1); !errors.Is(err, billing.ErrReservationReleased) {
		t.Fatalf("gate of a released call = %v", err)
	}
}

func TestGateWithoutAccountIsInsufficientBalance(t *testing.T) {
	e := newEnv(t, policy(0))
	_, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: uuid.NewString(), CallID: uuid.NewString(), DestinationType: "sip"})
	var low *billing.InsufficientBalanceError
	if !errors.As(err, &low) || !low.NoAccount || low.Required != rateSIP {
		t.Fatalf("err = %v, want insufficient balance (no account)", err)
	}
	if n := e.count(t, "SELECT COUNT(*) FROM billing_reservations"); n != 0 {
		t.Fatalf("%d reservations written", n)
	}
}

func TestReleaseIsIdempotentAndBlocksALateGate(t *testing.T) {
	e := newEnv(t, policy(10*rateTel))
	cus, _ := e.customer(t)
	call := uuid.NewString()
	for range 2 {
		if err := e.svc.Release(bg(), call); err != nil {
			t.Fatal(err)
		}
	}
	_, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: cus, CallID: call, DestinationType: "tel"})
	if !errors.Is(err, billing.ErrReservationReleased) {
		t.Fatalf("gate after release = %v, want ErrReservationReleased", err)
	}
	if n := e.count(t, "SELECT COUNT(*) FROM billing_reservations WHERE tm_release IS NULL"); n != 0 {
		t.Fatalf("%d active reservations", n)
	}
}

// TestConcurrentGatesNeverOverdraw: 50 gate requests at once on a balance covering three minutes
// let exactly three calls through.
func TestConcurrentGatesNeverOverdraw(t *testing.T) {
	e := newEnv(t, policy(3*rateTel))
	cus, acc := e.customer(t)
	var allowed, refused atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: cus, CallID: uuid.NewString(), DestinationType: "tel"})
			var low *billing.InsufficientBalanceError
			switch {
			case err == nil:
				allowed.Add(1)
			case errors.As(err, &low):
				refused.Add(1)
			default:
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("unexpected gate error: %v", err)
	}
	if allowed.Load() != 3 || refused.Load() != 47 {
		t.Fatalf("allowed %d, refused %d; want 3 and 47", allowed.Load(), refused.Load())
	}
	if a := e.account(t, acc.ID); a.Reserved != 3*rateTel {
		t.Fatalf("reserved %d, want %d", a.Reserved, 3*rateTel)
	}
}

func TestChargeOnceUnderConcurrentDuplicates(t *testing.T) {
	p := policy(1_000_000)
	p.Slice = 2 * time.Minute // the quota covers the 61 s call
	e := newEnv(t, p)
	cus, acc := e.customer(t)
	call := uuid.NewString()
	if _, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: cus, CallID: call, DestinationType: "tel"}); err != nil {
		t.Fatal(err)
	}
	ended := billing.CallEnded{CallID: call, CustomerID: cus, DestinationType: "tel", Duration: 61}
	outcomes := make(chan string, 10)
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := e.svc.ChargeCall(bg(), ended)
			if err != nil {
				t.Errorf("ChargeCall: %v", err)
			}
			outcomes <- res.Outcome
		}()
	}
	wg.Wait()
	close(outcomes)
	got := map[string]int{}
	for o := range outcomes {
		got[o]++
	}
	if got[billing.OutcomeCharged] != 1 || got[billing.OutcomeDuplicate] != 9 {
		t.Fatalf("outcomes = %v, want one charge and nine duplicates", got)
	}
	a := e.account(t, acc.ID)
	if a.Balance != 1_000_000-2*rateTel || a.Reserved != 0 {
		t.Fatalf("account = %+v, want two minutes charged once and nothing reserved", a)
	}
	if n := e.count(t, "SELECT COUNT(*) FROM billing_ledger WHERE kind = 'call'"); n != 1 {
		t.Fatalf("%d call entries in the ledger", n)
	}
	// account_updated #1 (opening), then charged #2 and account_updated #3: one resource, no gaps.
	evs := e.outbox(t)
	var types []string
	for i, ev := range evs {
		types = append(types, ev.EventType)
		if ev.Sequence != int64(i+1) || ev.ResourceID != acc.ID {
			t.Fatalf("event %d = %+v, want sequence %d of account %s", i, ev, i+1, acc.ID)
		}
	}
	if fmt.Sprint(types) != "[billing.account_updated billing.charged billing.account_updated]" {
		t.Fatalf("events = %v", types)
	}
	var charged struct {
		CallID          string `json:"call_id"`
		Amount          int64  `json:"amount"`
		BillableSeconds int    `json:"billable_seconds"`
	}
	if err := json.Unmarshal(evs[1].Data, &charged); err != nil || charged.CallID != call || charged.Amount != -2*rateTel || charged.BillableSeconds != 120 {
		t.Fatalf("billing.charged data = %s", evs[1].Data)
	}
}

func TestChargeUsesTheRateReservedAtTheGate(t *testing.T) {
	e := newEnv(t, policy(1_000_000))
	cus, acc := e.customer(t)
	call := uuid.NewString()
	if _, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: cus, CallID: call, DestinationType: "tel"}); err != nil {
		t.Fatal(err)
	}
	// The rate doubles while the call is in progress (a restart with new configuration).
	p := policy(1_000_000)
	p.Rates["tel"] = 2 * rateTel
	later := billing.NewService(billing.Deps{Store: e.store, Reader: e.store, Policy: p, Clock: e.clock.Now})
	res, err := later.ChargeCall(bg(), billing.CallEnded{CallID: call, CustomerID: cus, DestinationType: "tel", Duration: 30})
	if err != nil || res.Entry.Amount != -rateTel || res.Entry.RatePerMinute != rateTel {
		t.Fatalf("charge = %+v, %v; want the reserved rate", res, err)
	}
	if a := e.account(t, acc.ID); a.Balance != 1_000_000-rateTel {
		t.Fatalf("balance %d", a.Balance)
	}
}

func TestUnansweredCallIsFreeAndReleasesItsReservation(t *testing.T) {
	e := newEnv(t, policy(rateTel))
	cus, acc := e.customer(t)
	call := uuid.NewString()
	if _, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: cus, CallID: call, DestinationType: "tel"}); err != nil {
		t.Fatal(err)
	}
	res, err := e.svc.ChargeCall(bg(), billing.CallEnded{CallID: call, CustomerID: cus, DestinationType: "tel", Duration: 0})
	if err != nil || res.Outcome != billing.OutcomeFree {
		t.Fatalf("charge = %+v, %v", res, err)
	}
	if a := e.account(t, acc.ID); a.Balance != rateTel || a.Reserved != 0 {
		t.Fatalf("account = %+v, want untouched balance and nothing reserved", a)
	}
	// The freed minute lets the next call through.
	if _, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: cus, CallID: uuid.NewString(), DestinationType: "tel"}); err != nil {
		t.Fatalf("next gate: %v", err)
	}
	if n := e.count(t, "SELECT COUNT(*) FROM billing_ledger WHERE kind = 'call'"); n != 0 {
		t.Fatalf("%d call entries for a free call", n)
	}
}

func TestChargeWithoutAccount(t *testing.T) {
	e := newEnv(t, policy(0))
	cus := uuid.NewString()
	// Nothing to charge: done, and nothing stays reserved.
	res, err := e.svc.ChargeCall(bg(), billing.CallEnded{CallID: uuid.NewString(), CustomerID: cus, DestinationType: "tel"})
	if err != nil || res.Outcome != billing.OutcomeFree {
		t.Fatalf("free call without account = %+v, %v", res, err)
	}
	// Something to charge: an error, so the event is retried and then dead-lettered, not lost.
	_, err = e.svc.ChargeCall(bg(), billing.CallEnded{CallID: uuid.NewString(), CustomerID: cus, DestinationType: "tel", Duration: 5})
	if !errors.Is(err, billing.ErrAccountNotFound) {
		t.Fatalf("charge without account = %v, want ErrAccountNotFound", err)
	}
}

func TestBalanceAddAndTheLedgerSumsToTheBalance(t *testing.T) {
	p := policy(500_000)
	p.Slice = time.Hour // the quota covers every call
	e := newEnv(t, p)
	cus, acc := e.customer(t)
	if _, err := e.svc.BalanceAdd(bg(), acc.ID, 250_000); err != nil {
		t.Fatal(err)
	}
	for _, d := range []int{1, 61, 0, 3599} {
		call := uuid.NewString()
		if _, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: cus, CallID: call, DestinationType: "sip"}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.ChargeCall(bg(), billing.CallEnded{CallID: call, CustomerID: cus, DestinationType: "sip", Duration: d}); err != nil {
			t.Fatal(err)
		}
	}
	a := e.account(t, acc.ID)
	want := int64(500_000 + 250_000 - rateSIP*(1+2+60))
	if a.Balance != want {
		t.Fatalf("balance %d, want %d", a.Balance, want)
	}
	if sum := e.count(t, "SELECT SUM(amount) FROM billing_ledger WHERE account_id = (SELECT id FROM billing_accounts LIMIT 1)"); int64(sum) != a.Balance {
		t.Fatalf("ledger sums to %d, balance is %d", sum, a.Balance)
	}
	tests := []struct {
		name   string
		id     string
		amount int64
		want   error
	}{
		{"zero", acc.ID, 0, &billing.InvalidError{}},
		{"negative", acc.ID, -1, &billing.InvalidError{}},
		{"too large", acc.ID, billing.MaxAmount + 1, &billing.InvalidError{}},
		{"unknown account", uuid.NewString(), 1, billing.ErrAccountNotFound},
		{"malformed account id", "nope", 1, billing.ErrAccountNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.svc.BalanceAdd(bg(), tt.id, tt.amount)
			var inv *billing.InvalidError
			if _, wantInvalid := tt.want.(*billing.InvalidError); wantInvalid && !errors.As(err, &inv) ||
				!wantInvalid && !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %T %v", err, tt.want, tt.want)
			}
		})
	}
	if b := e.account(t, acc.ID).Balance; b != want {
		t.Fatalf("a refused top-up changed the balance to %d", b)
	}
}

func TestAccountReadsAreScopedToTheCustomer(t *testing.T) {
	e := newEnv(t, policy(100))
	cus, acc := e.customer(t)
	other, _ := e.customer(t)
	if a, err := e.svc.Account(bg(), cus, acc.ID); err != nil || a.ID != acc.ID || a.CustomerID != cus {
		t.Fatalf("own account = %+v, %v", a, err)
	}
	for _, tt := range []struct{ name, customer, id string }{
		{"another customer's", other, acc.ID},
		{"unknown", cus, uuid.NewString()},
		{"malformed id", cus, "x"},
	} {
		if _, err := e.svc.Account(bg(), tt.customer, tt.id); !errors.Is(err, billing.ErrAccountNotFound) {
			t.Errorf("%s: err = %v, want ErrAccountNotFound", tt.name, err)
		}
	}
}

func TestListsPage(t *testing.T) {
	e := newEnv(t, policy(1_000_000))
	cus, acc := e.customer(t)
	var otherIDs []string
	for range 4 {
		_, a := e.customer(t)
		otherIDs = append(otherIDs, a.ID)
	}
	// Ledger: the initial credit, then five top-ups of 1..5.
	for i := int64(1); i <= 5; i++ {
		if _, err := e.svc.BalanceAdd(bg(), acc.ID, i); err != nil {
			t.Fatal(err)
		}
	}
	var amounts []int64
	token := ""
	for pages := 0; ; pages++ {
		page, err := e.svc.Entries(bg(), billing.Query{CustomerID: cus, PageSize: 4, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, en := range page.Items {
			amounts = append(amounts, en.Amount)
		}
		if token = page.NextPageToken; token == "" {
			if pages != 1 {
				t.Fatalf("%d pages, want 2", pages+1)
			}
			break
		}
	}
	if fmt.Sprint(amounts) != "[5 4 3 2 1 1000000]" {
		t.Fatalf("ledger newest first = %v", amounts)
	}
	all, err := e.svc.Entries(bg(), billing.Query{PageSize: 100})
	if err != nil || len(all.Items) != 10 || all.NextPageToken != "" {
		t.Fatalf("every customer's ledger: %d entries, token %q, %v; want 10", len(all.Items), all.NextPageToken, err)
	}

	seen := map[string]bool{}
	token = ""
	for {
		page, err := e.svc.Accounts(bg(), billing.Query{PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range page.Items {
			if seen[a.ID] {
				t.Fatalf("account %s listed twice", a.ID)
			}
			seen[a.ID] = true
		}
		if token = page.NextPageToken; token == "" {
			break
		}
	}
	if len(seen) != 5 || !seen[acc.ID] || !seen[otherIDs[3]] {
		t.Fatalf("listed %d accounts, want all 5", len(seen))
	}

	bad := []billing.Query{{PageToken: "garbage!"}, {PageToken: "bA"}, {PageSize: 101}, {PageSize: -1}, {CustomerID: "nope"}}
	for _, q := range bad {
		_, err1 := e.svc.Entries(bg(), q)
		_, err2 := e.svc.Accounts(bg(), q)
		for _, err := range []error{err1, err2} {
			var inv *billing.InvalidError
			if !errors.Is(err, billing.ErrInvalidPageToken) && !errors.As(err, &inv) {
				t.Errorf("query %+v: err = %v, want a bad-input error", q, err)
			}
		}
	}
}

func TestSweeperExpiresAndPurges(t *testing.T) {
	e := newEnv(t, policy(10*rateTel))
	cus, _ := e.customer(t)
	gate := func() string {
		call := uuid.NewString()
		if _, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: cus, CallID: call, DestinationType: "tel"}); err != nil {
			t.Fatal(err)
		}
		return call
	}
	lost, ended := gate(), gate()
	if _, err := e.svc.ChargeCall(bg(), billing.CallEnded{CallID: ended, CustomerID: cus, DestinationType: "tel", Duration: 10}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(71 * time.Minute)
	fresh := gate()

	reg := prometheus.NewRegistry()
	sw := mysql.NewSweeper(e.db, testenv.Logger(t), mysql.SweeperOptions{Retention: 24 * time.Hour, Registerer: reg, Clock: e.clock.Now})
	expired, purged, err := sw.Sweep(bg())
	if err != nil || expired != 1 || purged != 0 {
		t.Fatalf("Sweep = %d expired, %d purged, %v; want the lost call's reservation expired", expired, purged, err)
	}
	reason := func(call string) string {
		var r sql.NullString
		id := uuid.MustParse(call)
		if err := e.db.QueryRow("SELECT release_reason FROM billing_reservations WHERE call_id = ?", id[:]).Scan(&r); err != nil {
			return "missing"
		}
		return r.String
	}
	if reason(lost) != billing.ReleaseExpired || reason(ended) != billing.ReleaseCharged || reason(fresh) != "" {
		t.Fatalf("reasons: lost %q, ended %q, fresh %q", reason(lost), reason(ended), reason(fresh))
	}
	if got := metric(t, reg, "billing_reservations_expired_total"); got != 1 {
		t.Fatalf("expired counter = %v", got)
	}
	// A late call.ended still charges the lost call.
	if res, err := e.svc.ChargeCall(bg(), billing.CallEnded{CallID: lost, CustomerID: cus, DestinationType: "tel", Duration: 10}); err != nil || res.Outcome != billing.OutcomeCharged {
		t.Fatalf("late charge = %+v, %v", res, err)
	}
	// After the retention, released rows go; the active one stays.
	e.clock.Advance(25 * time.Hour)
	if _, purged, err := sw.Sweep(bg()); err != nil || purged != 2 {
		t.Fatalf("purged %d, %v; want the two released rows", purged, err)
	}
	if reason(fresh) != billing.ReleaseExpired {
		t.Fatalf("the fresh reservation expired in the second sweep: reason %q", reason(fresh))
	}
}

// metric is the value of a counter or gauge without labels in reg.
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			m := mf.GetMetric()[0]
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestGateArrivingAfterCallEndedIsRefused: a gate request that arrives after its call's
// call.ended (out of order, or redelivered) must not hold money for a call that is over.
func TestGateArrivingAfterCallEndedIsRefused(t *testing.T) {
	e := newEnv(t, policy(10*rateTel))
	cus, acc := e.customer(t)
	for _, d := range []int{0, 30} {
		call := uuid.NewString()
		if _, err := e.svc.ChargeCall(bg(), billing.CallEnded{CallID: call, CustomerID: cus, DestinationType: "tel", Duration: d}); err != nil {
			t.Fatal(err)
		}
		_, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: cus, CallID: call, DestinationType: "tel"})
		if !errors.Is(err, billing.ErrReservationReleased) {
			t.Fatalf("duration %d: late gate = %v, want ErrReservationReleased", d, err)
		}
	}
	if a := e.account(t, acc.ID); a.Reserved != 0 || a.Balance != 9*rateTel {
		t.Fatalf("account = %+v", a)
	}
}

// Concurrent requests for the next slice of quota, by every call of one account and each sent
// twice (a retry racing the original), never reserve more than the balance; each call is then
// charged what it was granted at most, and the balance ends at zero, never below, equal to the
// ledger.
func TestConcurrentExtensionsNeverOverReserve(t *testing.T) {
	p := policy(100_000) // 100 s at 1 000 a second
	p.Rates["tel"] = 60_000
	p.Increment, p.Slice = time.Second, 10*time.Second
	e := newEnv(t, p)
	cus, acc := e.customer(t)
	calls := make([]string, 4)
	for i := range calls {
		calls[i] = uuid.NewString()
		r, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: cus, CallID: calls[i], DestinationType: "tel"})
		if err != nil || r.Granted != 10 || r.Amount != 10_000 {
			t.Fatalf("Gate = %+v, %v; want 10 s for 10000", r, err)
		}
	}
	granted := make([]int, len(calls))
	var wg sync.WaitGroup
	for i, call := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			quota := 10
			for {
				// The request and its retry race each other.
				results := make(chan billing.Reservation, 2)
				errs := make(chan error, 2)
				for range 2 {
					go func() {
						r, err := e.svc.Extend(bg(), billing.ExtendRequest{CustomerID: cus, CallID: call, Quota: quota})
						results <- r
						errs <- err
					}()
				}
				var refused bool
				for range 2 {
					r, err := <-results, <-errs
					var low *billing.InsufficientBalanceError
					switch {
					case errors.As(err, &low):
						refused = true
					case err != nil:
						t.Errorf("Extend: %v", err)
						return
					case r.Granted != quota+10:
						t.Errorf("Extend(%d) granted %d, want %d", quota, r.Granted, quota+10)
						return
					}
				}
				if refused {
					granted[i] = quota
					return
				}
				quota += 10
			}
		}()
	}
	wg.Wait()
	total := 0
	for _, g := range granted {
		total += g
	}
	if total != 100 {
		t.Fatalf("granted %v (%d s), want 100 s in all: the balance covers 100 s", granted, total)
	}
	if a := e.account(t, acc.ID); a.Reserved != 100_000 || a.Available() != 0 {
		t.Fatalf("account reserved %d available %d; want 100000 and 0", a.Reserved, a.Available())
	}
	// Each call talked 3 s past its quota (the BYE's delay): charged its quota only.
	for i, call := range calls {
		res, err := e.svc.ChargeCall(bg(), billing.CallEnded{CallID: call, CustomerID: cus, DestinationType: "tel", Duration: granted[i] + 3})
		if err != nil || res.Entry.Amount != -int64(granted[i])*1_000 || res.Unbilled != 3 {
			t.Fatalf("charge of %d s granted = %+v, %v", granted[i], res, err)
		}
	}
	a := e.account(t, acc.ID)
	accID := uuid.MustParse(acc.ID)
	sum := e.count(t, "SELECT CAST(SUM(amount) AS SIGNED) FROM billing_ledger WHERE account_id = ?", accID[:])
	if a.Balance != 0 || a.Reserved != 0 || int64(sum) != a.Balance {
		t.Fatalf("balance %d reserved %d ledger %d; want 0, 0, 0", a.Balance, a.Reserved, sum)
	}
	// A call that ended gets no more quota.
	_, err := e.svc.Extend(bg(), billing.ExtendRequest{CustomerID: cus, CallID: calls[0], Quota: granted[0]})
	if !errors.Is(err, billing.ErrReservationReleased) {
		t.Fatalf("Extend after the charge = %v, want ErrReservationReleased", err)
	}
}

// A reservation that expired without its call.ended frees its money for other calls; its late
// charge then takes only what the balance can pay above what the others hold.
func TestLateChargeAfterExpiryNeverGoesBelowZero(t *testing.T) {
	e := newEnv(t, policy(rateTel))
	cus, acc := e.customer(t)
	first, second := uuid.NewString(), uuid.NewString()
	if _, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: cus, CallID: first, DestinationType: "tel"}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(71 * time.Minute) // the first reservation expired
	if _, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: cus, CallID: second, DestinationType: "tel"}); err != nil {
		t.Fatal(err)
	}
	res, err := e.svc.ChargeCall(bg(), billing.CallEnded{CallID: first, CustomerID: cus, DestinationType: "tel", Duration: 60})
	if err != nil || res.Entry.Amount != 0 || res.Uncollected != rateTel {
		t.Fatalf("late charge = %+v, %v; want nothing collected", res, err)
	}
	if a := e.account(t, acc.ID); a.Balance != rateTel || a.Reserved != rateTel {
		t.Fatalf("balance %d reserved %d; the second call's reservation must stay covered", a.Balance, a.Reserved)
	}
}
