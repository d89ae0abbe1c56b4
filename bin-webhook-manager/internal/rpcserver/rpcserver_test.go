package rpcserver_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-webhook-manager/internal/mysql"
	"voipbin/bin-webhook-manager/internal/netguard"
	"voipbin/bin-webhook-manager/internal/rpcserver"
	"voipbin/bin-webhook-manager/internal/webhook"
	"voipbin/bin-webhook-manager/migrations"
	"voipbin/pkg/apierr"
	"voipbin/pkg/event"
	"voipbin/pkg/migrate"
	"voipbin/pkg/rpc"
	"voipbin/pkg/testenv"
	"voipbin/pkg/webhookapi"
)

// toQueue sends every call to one queue: the contract client talks to this test's server alone.
type toQueue struct {
	c     rpc.Caller
	queue string
}

func (q toQueue) Call(ctx context.Context, _ string, req rpc.Request) (*rpc.Response, error) {
	return q.c.Call(ctx, q.queue, req)
}

type env struct {
	client *webhookapi.Client
	fanout *webhook.Fanout
	raw    rpc.Caller
	queue  string
}

// setup runs the real routes over real MySQL on a queue of the test's own, and returns the
// contract client of pkg/webhookapi pointed at it.
func setup(t *testing.T) env {
	t.Helper()
	db := testenv.MySQL(t)
	if _, err := migrate.Up(context.Background(), db, migrations.FS, "webhook", testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	conn := testenv.Rabbit(t)
	queue := testenv.Name("webhook-rpc")
	testenv.DeleteQueuesAtCleanup(t, conn, queue)
	guard := netguard.New([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, nil)
	deliveries := mysql.NewDeliveryStore(db)
	svc := webhook.NewService(mysql.NewWebhookStore(db), deliveries, guard, nil)
	srv := rpc.NewServer(conn, queue, testenv.Logger(t), rpc.ServerOptions{})
	rpcserver.New(svc).Register(srv)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testenv.Eventually(t, 10*time.Second, "a consumer on "+queue, func() bool {
		ch, err := conn.Channel(context.Background())
		if err != nil {
			return false
		}
		defer ch.Close()
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		return err == nil && q.Consumers > 0
	})
	rc := rpc.NewClient(conn, testenv.Logger(t), rpc.ClientOptions{})
	t.Cleanup(rc.Close)
	caller := toQueue{c: rc, queue: queue}
	return env{client: webhookapi.NewClient(caller), fanout: webhook.NewFanout(deliveries, nil), raw: caller, queue: queue}
}

func wantReason(t *testing.T, err error, status apierr.Status, reason string) *apierr.Error {
	t.Helper()
	e, ok := apierr.As(err)
	if !ok || e.Status != status || e.Reason != reason {
		t.Fatalf("error = %v, want %s/%s", err, status, reason)
	}
	return e
}

func TestWebhookRoutes(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	c1, c2 := uuid.NewString(), uuid.NewString()

	created, err := e.client.Create(ctx, webhookapi.WriteRequest{CustomerID: c1, Name: "ops", URI: "http://127.0.0.1:9/hook",
		EventTypes: []string{"call.*", "sms.sent"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(created.Secret, "whsec_") || created.Method != "POST" || created.Status != webhookapi.StatusEnabled ||
		created.CustomerID != c1 || created.ID == "" || created.TMCreate.IsZero() {
		t.Fatalf("Create = %+v", created)
	}

	got, err := e.client.Get(ctx, c1, created.ID)
	if err != nil || got.Secret != "" || got.URI != created.URI || len(got.EventTypes) != 2 {
		t.Fatalf("Get = %+v, %v; want it without the secret", got, err)
	}
	if _, err := e.client.Get(ctx, "", created.ID); err != nil {
		t.Fatalf("Get by superadmin (no scope): %v", err)
	}
	// Another customer's webhook is answered exactly like a missing one.
	_, errOther := e.client.Get(ctx, c2, created.ID)
	_, errMissing := e.client.Get(ctx, c2, uuid.NewString())
	a, b := wantReason(t, errOther, apierr.NotFound, webhookapi.ErrReasonWebhookNotFound), wantReason(t, errMissing, apierr.NotFound, webhookapi.ErrReasonWebhookNotFound)
	if a.Message != b.Message {
		t.Fatalf("other customer's %q differs from missing %q", a.Message, b.Message)
	}
	wantReason(t, func() error { _, err := e.client.Get(ctx, c1, "not-an-id"); return err }(), apierr.NotFound, webhookapi.ErrReasonWebhookNotFound)

	second, err := e.client.Create(ctx, webhookapi.WriteRequest{CustomerID: c2, URI: "http://127.0.0.1:9/other", Method: "put", EventTypes: []string{"*"}})
	if err != nil || second.Method != "PUT" {
		t.Fatalf("Create = %+v, %v", second, err)
	}
	if list, err := e.client.List(ctx, c1); err != nil || len(list) != 1 || list[0].ID != created.ID || list[0].Secret != "" {
		t.Fatalf("List(c1) = %+v, %v", list, err)
	}
	if list, _ := e.client.List(ctx, ""); len(list) != 2 {
		t.Fatalf("List(any) = %d webhooks, want 2", len(list))
	}

	upd, err := e.client.Update(ctx, c1, created.ID, webhookapi.WriteRequest{Name: "renamed", URI: "http://127.0.0.1:9/v2",
		EventTypes: []string{"call.ended"}, Status: webhookapi.StatusDisabled})
	if err != nil || upd.Name != "renamed" || upd.Status != webhookapi.StatusDisabled || upd.Secret != "" || !upd.TMUpdate.After(created.TMUpdate) {
		t.Fatalf("Update = %+v, %v", upd, err)
	}
	_, err = e.client.Update(ctx, c2, created.ID, webhookapi.WriteRequest{URI: "http://127.0.0.1:9/v2", EventTypes: []string{"*"}})
	wantReason(t, err, apierr.NotFound, webhookapi.ErrReasonWebhookNotFound)

	rot, err := e.client.RotateSecret(ctx, c1, created.ID)
	if err != nil || !strings.HasPrefix(rot.Secret, "whsec_") || rot.Secret == created.Secret {
		t.Fatalf("RotateSecret = %+v, %v; want a new secret", rot, err)
	}

	del, err := e.client.Delete(ctx, c2, second.ID)
	if err != nil || del.ID != second.ID {
		t.Fatalf("Delete = %+v, %v", del, err)
	}
	_, err = e.client.Get(ctx, c2, second.ID)
	wantReason(t, err, apierr.NotFound, webhookapi.ErrReasonWebhookNotFound)
}

func TestWebhookValidation(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	customer := uuid.NewString()
	valid := webhookapi.WriteRequest{CustomerID: customer, URI: "http://127.0.0.1:9/hook", EventTypes: []string{"call.created"}}
	with := func(f func(*webhookapi.WriteRequest)) webhookapi.WriteRequest { r := valid; f(&r); return r }
	tests := []struct {
		name      string
		req       webhookapi.WriteRequest
		reason    string
		wantField string
	}{
		{"ftp", with(func(r *webhookapi.WriteRequest) { r.URI = "ftp://127.0.0.1/x" }), apierr.ReasonInvalidArgument, "uri"},
		{"no uri", with(func(r *webhookapi.WriteRequest) { r.URI = "" }), apierr.ReasonInvalidArgument, "uri"},
		{"bad method", with(func(r *webhookapi.WriteRequest) { r.Method = "GET" }), apierr.ReasonInvalidArgument, "method"},
		{"bad event type", with(func(r *webhookapi.WriteRequest) { r.EventTypes = []string{"call created"} }), apierr.ReasonInvalidArgument, "event_types[0]"},
		{"no event types", with(func(r *webhookapi.WriteRequest) { r.EventTypes = nil }), apierr.ReasonInvalidArgument, "event_types"},
		{"no customer", with(func(r *webhookapi.WriteRequest) { r.CustomerID = "" }), apierr.ReasonInvalidArgument, "customer_id"},
		{"bad customer", with(func(r *webhookapi.WriteRequest) { r.CustomerID = "x" }), apierr.ReasonInvalidArgument, "customer_id"},
		{"private target", with(func(r *webhookapi.WriteRequest) { r.URI = "http://10.0.0.7/hook" }), webhookapi.ErrReasonTargetForbidden, "uri"},
		{"metadata target", with(func(r *webhookapi.WriteRequest) { r.URI = "http://169.254.169.254/latest/meta-data/" }), webhookapi.ErrReasonTargetForbidden, "uri"},
		{"metadata via IPv4-compatible IPv6", with(func(r *webhookapi.WriteRequest) { r.URI = "http://[::a9fe:a9fe]/latest/meta-data/" }), webhookapi.ErrReasonTargetForbidden, "uri"},
		{"private via NAT64", with(func(r *webhookapi.WriteRequest) { r.URI = "http://[64:ff9b::a00:7]/hook" }), webhookapi.ErrReasonTargetForbidden, "uri"},
		{"name of only spaces", with(func(r *webhookapi.WriteRequest) { r.Name = "   " }), apierr.ReasonInvalidArgument, "name"},
		{"metadata v6 target", with(func(r *webhookapi.WriteRequest) { r.URI = "http://[fd00:ec2::254]/" }), webhookapi.ErrReasonTargetForbidden, "uri"},
		{"link-local target", with(func(r *webhookapi.WriteRequest) { r.URI = "http://[fe80::1]/" }), webhookapi.ErrReasonTargetForbidden, "uri"},
		{"cgnat target", with(func(r *webhookapi.WriteRequest) { r.URI = "https://100.64.1.1/" }), webhookapi.ErrReasonTargetForbidden, "uri"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.client.Create(ctx, tt.req)
			ae := wantReason(t, err, apierr.InvalidArgument, tt.reason)
			if len(ae.Details) == 0 || ae.Details[0]["field"] != tt.wantField {
				t.Fatalf("details %v, want field %s", ae.Details, tt.wantField)
			}
		})
	}

	// Malformed bodies and scopes, sent raw.
	for _, tc := range []struct {
		name, method, route, body, reason string
	}{
		{"not JSON", "POST", "/v1/webhooks", `{"uri":`, apierr.ReasonInvalidJSONBody},
		{"unknown field", "POST", "/v1/webhooks", `{"customer_id":"` + customer + `","uri":"http://127.0.0.1/","event_types":["*"],"secret":"mine"}`, apierr.ReasonInvalidJSONBody},
		{"empty body", "POST", "/v1/webhooks", ``, apierr.ReasonInvalidJSONBody},
		{"bad scope", "GET", "/v1/webhooks?customer_id=nope", ``, apierr.ReasonInvalidArgument},
		{"bad page size", "GET", "/v1/webhooks/" + uuid.NewString() + "/deliveries?page_size=0&customer_id=" + customer, ``, apierr.ReasonInvalidArgument},
		{"page size too big", "GET", "/v1/webhooks/" + uuid.NewString() + "/deliveries?page_size=1000", ``, apierr.ReasonInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := rpc.Request{Method: tc.method, Route: tc.route}
			if tc.body != "" {
				req.Body = []byte(tc.body)
			}
			resp, err := e.raw.Call(ctx, e.queue, req)
			if err == nil {
				t.Fatalf("got %d %s, want an error", resp.StatusCode, resp.Body)
			}
			wantReason(t, err, apierr.InvalidArgument, tc.reason)
		})
	}

	// A well-formed type the platform does not emit yet is accepted.
	if _, err := e.client.Create(ctx, with(func(r *webhookapi.WriteRequest) { r.EventTypes = []string{"sms.sent", "*", "call.*"} })); err != nil {
		t.Fatalf("sms.sent refused: %v", err)
	}
}

func TestDeliveryLogRoutes(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	customer := uuid.NewString()
	w, err := e.client.Create(ctx, webhookapi.WriteRequest{CustomerID: customer, URI: "http://127.0.0.1:9/hook", EventTypes: []string{"call.*"}})
	if err != nil {
		t.Fatal(err)
	}
	var events []event.Event
	for i := range 3 {
		ev, _ := event.New("call.updated", customer, "call", uuid.NewString(), int64(i+1), map[string]any{"n": i})
		events = append(events, ev)
		if err := e.fanout.Handle(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	page, err := e.client.Deliveries(ctx, customer, w.ID, 2, "")
	if err != nil || len(page.Result) != 2 || page.NextPageToken == "" {
		t.Fatalf("Deliveries page 1 = %+v, %v", page, err)
	}
	d := page.Result[0]
	if d.EventID != events[2].EventID || d.Status != webhookapi.DeliveryPending || d.NextAttempt == nil || d.Attempts == nil || d.WebhookID != w.ID {
		t.Fatalf("newest delivery = %+v", d)
	}
	rest, err := e.client.Deliveries(ctx, customer, w.ID, 2, page.NextPageToken)
	if err != nil || len(rest.Result) != 1 || rest.NextPageToken != "" || rest.Result[0].EventID != events[0].EventID {
		t.Fatalf("Deliveries page 2 = %+v, %v", rest, err)
	}
	_, err = e.client.Deliveries(ctx, uuid.NewString(), w.ID, 0, "")
	wantReason(t, err, apierr.NotFound, webhookapi.ErrReasonWebhookNotFound)
	_, err = e.client.Deliveries(ctx, customer, w.ID, 0, "bogus")
	wantReason(t, err, apierr.InvalidArgument, apierr.ReasonInvalidArgument)

	r, err := e.client.Retry(ctx, customer, w.ID, d.ID)
	if err != nil || r.ID != d.ID || r.Status != webhookapi.DeliveryPending {
		t.Fatalf("Retry = %+v, %v", r, err)
	}
	_, err = e.client.Retry(ctx, customer, w.ID, uuid.NewString())
	wantReason(t, err, apierr.NotFound, webhookapi.ErrReasonDeliveryNotFound)

	if _, err := e.client.Update(ctx, customer, w.ID, webhookapi.WriteRequest{URI: w.URI, EventTypes: w.EventTypes, Status: webhookapi.StatusDisabled}); err != nil {
		t.Fatal(err)
	}
	_, err = e.client.Retry(ctx, customer, w.ID, d.ID)
	wantReason(t, err, apierr.FailedPrecondition, webhookapi.ErrReasonWebhookDisabled)
}
