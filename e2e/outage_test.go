package e2e

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"voipbin/pkg/testenv"
)

// TestMariaDBOutageIs503 runs the stack on a MariaDB of the test's own (never the machine's shared
// one), kills that server, and expects every request that needs the database to be answered 503
// SERVICE_UNAVAILABLE with Retry-After, not 500, whichever service owns the data; after a restart
// of the database the same requests succeed again without restarting any service.
func TestMariaDBOutageIs503(t *testing.T) {
	if testing.Short() {
		t.Skip("starts its own MariaDB and the whole stack")
	}
	maria, dsn := OwnMariaDB(t, t.TempDir()) // skips, saying so, without mariadbd
	s := StartStackOn(t, StackOptions{Deps: Deps{DatabaseDSN: dsn, RabbitURL: testenv.RabbitURL(), RedisAddress: testenv.RedisAddress()}})
	admin := s.NewClient().Login(s.AdminUser, s.AdminPass)
	_, cust := s.NewCustomer(admin, testenv.Name("outage"))

	type probe struct {
		name, method, path string
		body               any
		client             *Client
	}
	probes := []probe{
		{"calls (call-manager)", "GET", "/v1.0/calls", nil, cust},
		{"webhooks (webhook-manager)", "GET", "/v1.0/webhooks", nil, cust},
		{"billing accounts (billing-manager)", "GET", "/v1.0/billing_accounts", nil, cust},
		{"customers (api-manager)", "POST", "/v1.0/customers", nil, admin},
	}
	for _, p := range probes[:3] {
		p.client.Must(200, p.method, p.path, nil)
	}

	maria.Kill()
	for i, p := range probes {
		body := p.body
		if p.path == "/v1.0/customers" {
			name := testenv.Name("outage-new")
			body = map[string]string{"name": name, "username": name + "-admin", "password": "pw-" + name + "-secret"}
			probes[i].body = body
		}
		r := p.client.Do(p.method, p.path, body)
		var env struct {
			Error struct{ Status, Reason string } `json:"error"`
		}
		_ = json.Unmarshal(r.Body, &env)
		if r.Status != 503 || env.Error.Status != "UNAVAILABLE" || env.Error.Reason != "SERVICE_UNAVAILABLE" {
			t.Errorf("%s with the database down: %d %s, want 503 UNAVAILABLE/SERVICE_UNAVAILABLE", p.name, r.Status, r.Body)
		}
		if secs, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || secs < 1 {
			t.Errorf("%s with the database down: Retry-After %q, want seconds", p.name, r.Header.Get("Retry-After"))
		}
	}

	if err := maria.Start(); err != nil {
		t.Fatal(err)
	}
	if err := maria.WaitReady(60 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, p := range probes {
		var last Response
		testenv.Eventually(t, 30*time.Second, p.name+" answers 2xx again after the database is back", func() bool {
			last = p.client.Do(p.method, p.path, p.body)
			return last.Status/100 == 2
		})
	}
	for _, name := range []string{"api-manager", "call-manager", "billing-manager", "webhook-manager", "rtc-manager"} {
		if s.Exited(name) {
			t.Errorf("%s exited during the database outage", name)
		}
	}
}
