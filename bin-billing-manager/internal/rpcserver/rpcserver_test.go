package rpcserver_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"voipbin/bin-billing-manager/internal/billing"
	"voipbin/bin-billing-manager/internal/mysql"
	"voipbin/bin-billing-manager/internal/rpcserver"
	"voipbin/bin-billing-manager/migrations"
	"voipbin/pkg/amqp"
	"voipbin/pkg/apierr"
	"voipbin/pkg/billingapi"
	"voipbin/pkg/migrate"
	"voipbin/pkg/rpc"
	"voipbin/pkg/testenv"
)

const rateTel, rateSIP = 20_000, 5_000

type stack struct {
	db     *sql.DB
	svc    *billing.Service
	client *billingapi.Client
	reg    *prometheus.Registry
}

// newStack serves the billing routes on billingapi.Queue (in this test process's own virtual host)
// over a fresh database, and returns the typed client every caller uses.
func newStack(t testing.TB, initial int64) *stack {
	t.Helper()
	db := testenv.MySQL(t)
	if _, err := migrate.Up(context.Background(), db, migrations.FS, "billing", testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	store := mysql.NewStore(db, mysql.Options{})
	svc := billing.NewService(billing.Deps{Store: store, Reader: store, Policy: billing.Policy{Currency: "USD",
		InitialBalance: initial, Rates: map[string]int64{"tel": rateTel, "sip": rateSIP}, ReservationTTL: time.Hour}})
	conn := testenv.Rabbit(t)
	reg := prometheus.NewRegistry()
	srv := rpc.NewServer(conn, billingapi.Queue, testenv.Logger(t), rpc.ServerOptions{Workers: 32, Registerer: reg})
	rpcserver.New(rpcserver.Deps{Gate: svc, Accounts: svc, Log: testenv.Logger(t), Registerer: reg}).Register(srv)
	testenv.DeleteQueuesAtCleanup(t, conn, billingapi.Queue)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitConsumer(t, conn, billingapi.Queue)
	client := rpc.NewClient(conn, testenv.Logger(t), rpc.ClientOptions{})
	t.Cleanup(client.Close)
	return &stack{db: db, svc: svc, client: billingapi.NewClient(client), reg: reg}
}

func waitConsumer(t testing.TB, conn *amqp.Conn, queue string) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, "a consumer on "+queue, func() bool {
		ch, err := conn.Channel(context.Background())
		if err != nil {
			return false
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return err == nil && q.Consumers > 0
	})
}

// customer opens an account for a new customer.
func (s *stack) customer(t testing.TB) (customerID string, acc billingapi.Account) {
	t.Helper()
	customerID = uuid.NewString()
	if _, err := s.svc.OpenAccount(context.Background(), customerID); err != nil {
		t.Fatal(err)
	}
	accs, err := s.client.Accounts(context.Background(), customerID)
	if err != nil || len(accs) != 1 {
		t.Fatalf("Accounts = %+v, %v", accs, err)
	}
	return customerID, accs[0]
}

func bg() context.Context { return context.Background() }

// wantAPIError checks err is a typed error with status and reason.
func wantAPIError(t *testing.T, err error, status apierr.Status, reason string) *apierr.Error {
	t.Helper()
	e, ok := apierr.As(err)
	if !ok || e.Status != status || e.Reason != reason {
		t.Fatalf("err = %v, want %s/%s", err, status, reason)
	}
	return e
}

func TestGateThroughRPC(t *testing.T) {
	s := newStack(t, rateTel+rateSIP)
	cus, acc := s.customer(t)
	call := uuid.NewString()

	got, err := s.client.Gate(bg(), billingapi.GateRequest{CustomerID: cus, CallID: call, DestinationType: "tel"})
	if err != nil || !got.Allowed || got.Reserved != rateTel {
		t.Fatalf("Gate = %+v, %v; want allowed with one tel minute reserved", got, err)
	}
	// The same call again: the same answer, nothing more held.
	if again, err := s.client.Gate(bg(), billingapi.GateRequest{CustomerID: cus, CallID: call, DestinationType: "tel"}); err != nil || again != got {
		t.Fatalf("repeated Gate = %+v, %v", again, err)
	}
	a, err := s.client.Account(bg(), cus, acc.ID)
	if err != nil || a.Reserved != rateTel || a.Available != rateSIP || a.Balance != rateTel+rateSIP {
		t.Fatalf("Account = %+v, %v", a, err)
	}

	// A second tel minute is not covered: 402 with the numbers.
	_, err = s.client.Gate(bg(), billingapi.GateRequest{CustomerID: cus, CallID: uuid.NewString(), DestinationType: "tel"})
	e := wantAPIError(t, err, apierr.PaymentRequired, billingapi.ErrReasonInsufficientBalance)
	if e.HTTPStatus() != http.StatusPaymentRequired || len(e.Details) != 1 ||
		e.Details[0]["balance"] != float64(rateTel+rateSIP) || e.Details[0]["reserved"] != float64(rateTel) || e.Details[0]["required"] != float64(rateTel) {
		t.Fatalf("402 details = %+v", e.Details)
	}
	// A sip minute is.
	if _, err := s.client.Gate(bg(), billingapi.GateRequest{CustomerID: cus, CallID: uuid.NewString(), DestinationType: "sip"}); err != nil {
		t.Fatalf("sip Gate: %v", err)
	}

	// Release is idempotent and frees the money; the released call cannot reserve again.
	for range 2 {
		if err := s.client.Release(bg(), call); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
	if a, _ := s.client.Account(bg(), cus, acc.ID); a.Reserved != rateSIP {
		t.Fatalf("after release reserved = %d, want %d", a.Reserved, rateSIP)
	}
	_, err = s.client.Gate(bg(), billingapi.GateRequest{CustomerID: cus, CallID: call, DestinationType: "tel"})
	wantAPIError(t, err, apierr.FailedPrecondition, billingapi.ErrReasonReservationReleased)

	// A customer with no account is refused like one with no money.
	_, err = s.client.Gate(bg(), billingapi.GateRequest{CustomerID: uuid.NewString(), CallID: uuid.NewString(), DestinationType: "tel"})
	wantAPIError(t, err, apierr.PaymentRequired, billingapi.ErrReasonInsufficientBalance)
}

// The next slice of quota through the real transport: granted while the balance covers it (a
// retry gets the same answer), then 402, and 409 once the call was charged.
func TestExtendThroughRPC(t *testing.T) {
	s := newStack(t, 2*rateTel) // default policy: 60 s slices per started minute
	cus, _ := s.customer(t)
	call := uuid.NewString()
	got, err := s.client.Gate(bg(), billingapi.GateRequest{CustomerID: cus, CallID: call, DestinationType: "tel"})
	if err != nil || got.Quota != 60 || got.Reserved != rateTel {
		t.Fatalf("Gate = %+v, %v; want 60 s for one minute", got, err)
	}
	for range 2 {
		ext, err := s.client.Extend(bg(), call, billingapi.ExtendRequest{CustomerID: cus, Quota: 60})
		if err != nil || ext.Quota != 120 || ext.Reserved != 2*rateTel {
			t.Fatalf("Extend = %+v, %v; want 120 s for two minutes", ext, err)
		}
	}
	_, err = s.client.Extend(bg(), call, billingapi.ExtendRequest{CustomerID: cus, Quota: 120})
	wantAPIError(t, err, apierr.PaymentRequired, billingapi.ErrReasonInsufficientBalance)
	_, err = s.client.Extend(bg(), call, billingapi.ExtendRequest{CustomerID: cus, Quota: 0})
	wantAPIError(t, err, apierr.InvalidArgument, apierr.ReasonInvalidArgument)
	if _, err := s.svc.ChargeCall(bg(), billing.CallEnded{CallID: call, CustomerID: cus, DestinationType: "tel", Duration: 125}); err != nil {
		t.Fatal(err)
	}
	_, err = s.client.Extend(bg(), call, billingapi.ExtendRequest{CustomerID: cus, Quota: 120})
	wantAPIError(t, err, apierr.FailedPrecondition, billingapi.ErrReasonReservationReleased)
}

func TestBadInputIsATypedError(t *testing.T) {
	s := newStack(t, 1_000_000)
	cus, acc := s.customer(t)
	tests := []struct {
		name       string
		method     string
		route      string
		body       any
		wantStatus apierr.Status
		wantReason string
		wantField  string
	}{
		{"gate: no body", "POST", "/v1/gate", nil, apierr.InvalidArgument, apierr.ReasonInvalidJSONBody, ""},
		{"gate: unknown field", "POST", "/v1/gate", map[string]any{"customer_id": cus, "call_id": uuid.NewString(), "destination_type": "tel", "x": 1},
			apierr.InvalidArgument, apierr.ReasonInvalidJSONBody, ""},
		{"gate: bad customer id", "POST", "/v1/gate", billingapi.GateRequest{CustomerID: "bob", CallID: uuid.NewString(), DestinationType: "tel"},
			apierr.InvalidArgument, apierr.ReasonInvalidArgument, "customer_id"},
		{"gate: no call id", "POST", "/v1/gate", billingapi.GateRequest{CustomerID: cus, DestinationType: "tel"},
			apierr.InvalidArgument, apierr.ReasonInvalidArgument, "call_id"},
		{"gate: unknown destination type", "POST", "/v1/gate", billingapi.GateRequest{CustomerID: cus, CallID: uuid.NewString(), DestinationType: "fax"},
			apierr.InvalidArgument, apierr.ReasonInvalidArgument, "destination_type"},
		{"gate: wrong JSON type", "POST", "/v1/gate", map[string]any{"customer_id": 5}, apierr.InvalidArgument, apierr.ReasonInvalidJSONBody, ""},
		{"release: bad call id", "DELETE", "/v1/reservations/nope", nil, apierr.InvalidArgument, apierr.ReasonInvalidArgument, "call_id"},
		{"balance add: negative", "POST", "/v1/accounts/" + acc.ID + "/balance_add", billingapi.BalanceAddRequest{Amount: -5},
			apierr.InvalidArgument, apierr.ReasonInvalidArgument, "amount"},
		{"balance add: no body", "POST", "/v1/accounts/" + acc.ID + "/balance_add", nil, apierr.InvalidArgument, apierr.ReasonInvalidJSONBody, ""},
		{"balance add: unknown account", "POST", "/v1/accounts/" + uuid.NewString() + "/balance_add", billingapi.BalanceAddRequest{Amount: 5},
			apierr.NotFound, billingapi.ErrReasonAccountNotFound, ""},
		{"billings: bad page size", "GET", "/v1/billings?page_size=many", nil, apierr.InvalidArgument, apierr.ReasonInvalidArgument, "page_size"},
		{"billings: page size too large", "GET", "/v1/billings?page_size=1000", nil, apierr.InvalidArgument, apierr.ReasonInvalidArgument, "page_size"},
		{"billings: forged token", "GET", "/v1/billings?page_token=abc", nil, apierr.InvalidArgument, apierr.ReasonInvalidArgument, "page_token"},
		{"accounts: bad customer id", "GET", "/v1/accounts?customer_id=x", nil, apierr.InvalidArgument, apierr.ReasonInvalidArgument, "customer_id"},
		{"account: malformed id", "GET", "/v1/accounts/zzz", nil, apierr.NotFound, billingapi.ErrReasonAccountNotFound, ""},
		{"unknown route", "GET", "/v1/nothing", nil, apierr.NotFound, apierr.ReasonRouteNotFound, ""},
	}
	client := rpc.NewClient(testenv.Rabbit(t), testenv.Logger(t), rpc.ClientOptions{})
	t.Cleanup(client.Close)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := rpc.Do(bg(), client, billingapi.Queue, tt.method, tt.route, tt.body, nil)
			e := wantAPIError(t, err, tt.wantStatus, tt.wantReason)
			if tt.wantField != "" && (len(e.Details) == 0 || e.Details[0]["field"] != tt.wantField) {
				t.Fatalf("details = %+v, want field %s", e.Details, tt.wantField)
			}
		})
	}
	if a, _ := s.client.Account(bg(), cus, acc.ID); a.Balance != 1_000_000 || a.Reserved != 0 {
		t.Fatalf("bad requests changed the account: %+v", a)
	}
}

func TestAccountsBalanceAddAndLedgerThroughRPC(t *testing.T) {
	s := newStack(t, 1_000_000)
	cus, acc := s.customer(t)
	other, otherAcc := s.customer(t)

	// Scoping: another customer's account does not exist for you.
	_, err := s.client.Account(bg(), other, acc.ID)
	wantAPIError(t, err, apierr.NotFound, billingapi.ErrReasonAccountNotFound)
	if a, err := s.client.Account(bg(), "", acc.ID); err != nil || a.CustomerID != cus || a.Currency != "USD" {
		t.Fatalf("superadmin Account = %+v, %v", a, err)
	}
	if all, err := s.client.Accounts(bg(), ""); err != nil || len(all) != 2 {
		t.Fatalf("all Accounts = %d, %v; want 2", len(all), err)
	}
	page, err := s.client.AccountsPage(bg(), "", 1, "")
	if err != nil || len(page.Result) != 1 || page.NextPageToken == "" {
		t.Fatalf("AccountsPage 1 = %+v, %v", page, err)
	}
	page2, err := s.client.AccountsPage(bg(), "", 1, page.NextPageToken)
	if err != nil || len(page2.Result) != 1 || page2.NextPageToken != "" || page2.Result[0].ID == page.Result[0].ID {
		t.Fatalf("AccountsPage 2 = %+v, %v", page2, err)
	}

	for i := int64(1); i <= 3; i++ {
		a, err := s.client.BalanceAdd(bg(), acc.ID, i*1000)
		if err != nil {
			t.Fatal(err)
		}
		if want := 1_000_000 + 1000*i*(i+1)/2; a.Balance != want || a.Available != want {
			t.Fatalf("after top-up %d: %+v, want balance %d", i, a, want)
		}
	}
	// The ledger, newest first, in pages, of this customer only.
	var amounts []int64
	token := ""
	for {
		l, err := s.client.Billings(bg(), cus, 3, token)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range l.Result {
			if b.CustomerID != cus || b.AccountID != acc.ID || b.Kind != billingapi.KindBalanceAdd {
				t.Fatalf("entry %+v", b)
			}
			amounts = append(amounts, b.Amount)
		}
		if token = l.NextPageToken; token == "" {
			break
		}
	}
	if fmt.Sprint(amounts) != "[3000 2000 1000 1000000]" {
		t.Fatalf("ledger = %v", amounts)
	}
	if l, err := s.client.Billings(bg(), other, 0, ""); err != nil || len(l.Result) != 1 || l.Result[0].AccountID != otherAcc.ID {
		t.Fatalf("other customer's ledger = %+v, %v", l, err)
	}
}

// TestFiftyConcurrentGatesOnOneMinuteLetOneThrough drives the gate as the call manager does, 50
// requests at once through the real RPC, on a balance that covers exactly one minute: exactly one
// call may start (the documented bound: floor(available / (reserve minutes × rate)) calls).
func TestFiftyConcurrentGatesOnOneMinuteLetOneThrough(t *testing.T) {
	s := newStack(t, rateTel)
	cus, acc := s.customer(t)
	type result struct {
		resp billingapi.GateResponse
		err  error
	}
	results := make(chan result, 50)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			ctx, cancel := context.WithTimeout(bg(), 10*time.Second)
			defer cancel()
			r, err := s.client.Gate(ctx, billingapi.GateRequest{CustomerID: cus, CallID: uuid.NewString(), DestinationType: "tel"})
			results <- result{r, err}
		}()
	}
	close(start)
	wg.Wait()
	close(results)
	allowed, refused := 0, 0
	for r := range results {
		switch {
		case r.err == nil && r.resp.Allowed && r.resp.Reserved == rateTel:
			allowed++
		case apierr.HasReason(r.err, billingapi.ErrReasonInsufficientBalance):
			refused++
		default:
			t.Errorf("unexpected answer %+v, %v", r.resp, r.err)
		}
	}
	if allowed != 1 || refused != 49 {
		t.Fatalf("allowed %d, refused %d; want 1 and 49", allowed, refused)
	}
	var active int
	if err := s.db.QueryRow("SELECT COUNT(*) FROM billing_reservations WHERE tm_release IS NULL").Scan(&active); err != nil || active != 1 {
		t.Fatalf("%d active reservations (%v), want 1", active, err)
	}
	if a, _ := s.client.Account(bg(), cus, acc.ID); a.Available != 0 || a.Reserved != rateTel {
		t.Fatalf("account = %+v", a)
	}
	for result, want := range map[string]float64{"allowed": 1, "refused": 49, "invalid": 0, "error": 0} {
		if got := decisions(t, s.reg, result); got != want {
			t.Errorf("billing_gate_decisions_total{result=%q} = %v, want %v", result, got, want)
		}
	}
}

func decisions(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "billing_gate_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no billing_gate_decisions_total{result=%q}", result)
	return 0
}
