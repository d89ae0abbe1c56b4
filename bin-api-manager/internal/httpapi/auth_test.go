package httpapi_test

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"voipbin/bin-api-manager/internal/identity"
	"voipbin/pkg/testenv"
)

func TestPingAndDocument(t *testing.T) {
	h := newHarness(t, options{})
	b := h.must(200, "GET", "/ping", "", nil)
	if got := decodeJSON[map[string]string](t, b)["message"]; got != "pong" {
		t.Fatalf("ping = %s", b)
	}
	resp, doc := h.do("GET", "/v1.0/openapi.yaml", "", nil)
	if resp.StatusCode != 200 || !strings.HasPrefix(string(doc), "openapi: 3.") || resp.Header.Get("Content-Type") != "application/yaml" {
		t.Fatalf("openapi.yaml: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

func TestLoginAndRefresh(t *testing.T) {
	h := newHarness(t, options{})
	c := h.newCustomer("acme")

	resp, b := h.do("POST", "/auth/login", "", map[string]string{"username": c.username, "password": "password-123"})
	if resp.StatusCode != 200 {
		t.Fatalf("login: %d %s", resp.StatusCode, b)
	}
	sess := decodeJSON[struct {
		Username string    `json:"username"`
		Token    string    `json:"token"`
		Expire   time.Time `json:"expire"`
	}](t, b)
	if sess.Username != c.username || sess.Token == "" || time.Until(sess.Expire) < 59*time.Minute {
		t.Fatalf("session = %+v", sess)
	}
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == "token" {
			cookie = ck
		}
	}
	if cookie == nil || cookie.Value != sess.Token || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode || cookie.Path != "/" {
		t.Fatalf("token cookie = %+v", cookie)
	}

	// The token works as a Bearer header, a ?token= parameter and a cookie.
	h.must(200, "GET", "/v1.0/customer", sess.Token, nil)
	h.must(200, "GET", "/v1.0/customer?token="+sess.Token, "", nil)
	h.must(200, "GET", "/v1.0/customer", "", nil, "Cookie", "token="+sess.Token)

	// Refresh, by header and by cookie.
	b = h.must(200, "POST", "/auth/refresh", sess.Token, nil)
	fresh := decodeJSON[map[string]any](t, b)["token"].(string)
	if fresh == "" {
		t.Fatal("no fresh token")
	}
	h.must(200, "GET", "/v1.0/customer", fresh, nil)
	h.must(200, "POST", "/auth/refresh", "", nil, "Cookie", "token="+sess.Token)
	h.expectError(401, "AUTHENTICATION_REQUIRED", "POST", "/auth/refresh", "", nil)
	h.expectError(401, "INVALID_CREDENTIALS", "POST", "/auth/refresh", "garbage", nil)

	// A failed login looks the same whether or not the user exists.
	wrong := h.expectError(401, "INVALID_CREDENTIALS", "POST", "/auth/login", "", map[string]string{"username": c.username, "password": "nope-nope"})
	unknown := h.expectError(401, "INVALID_CREDENTIALS", "POST", "/auth/login", "", map[string]string{"username": "nobody-here", "password": "nope-nope"})
	if wrong.Message != unknown.Message || wrong.Status != unknown.Status {
		t.Fatalf("wrong password %+v differs from unknown user %+v", wrong, unknown)
	}
	h.expectError(400, "INVALID_JSON_BODY", "POST", "/auth/login", "", `{"username":"x","password":"y","otp":1}`)
}

func forge(t *testing.T, m jwt.SigningMethod, key any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	tok.Header["kid"] = "k1"
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestBadTokensAre401(t *testing.T) {
	h := newHarness(t, options{})
	c := h.newCustomer("acme")
	now := time.Now().Unix()
	// A well-signed token must name a user that exists (revocation), so the control is c's user.
	claims := jwt.MapClaims{"sub": subject(t, c.token), "customer_id": c.id, "permission": 32, "iat": now, "exp": now + 600}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(c.token, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(payload), `"permission":32`, `"permission":1`, 1))) + "." + parts[2]
	if tampered == c.token {
		t.Fatal("tampering changed nothing")
	}

	h.must(200, "GET", "/v1.0/calls", forge(t, jwt.SigningMethodHS256, jwtSecret, claims), nil) // the control
	tests := []struct {
		name  string
		token string
	}{
		{"expired", forge(t, jwt.SigningMethodHS256, jwtSecret, jwt.MapClaims{"sub": "u", "customer_id": c.id, "permission": 32, "iat": now - 7200, "exp": now - 3600})},
		{"tampered", tampered},
		{"alg none", forge(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims)},
		{"HS384", forge(t, jwt.SigningMethodHS384, jwtSecret, claims)},
		{"RS256", forge(t, jwt.SigningMethodRS256, rsaKey, claims)},
		{"wrong key", forge(t, jwt.SigningMethodHS256, []byte("another-secret-of-at-least-32-bytes!!!"), claims)},
		{"not a JWT", "hello"},
		{"unknown access key", identity.NewAccessKeyToken()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.expectError(401, "INVALID_CREDENTIALS", "GET", "/v1.0/calls", tt.token, nil)
			h.expectError(401, "INVALID_CREDENTIALS", "GET", "/v1.0/calls?token="+tt.token, "", nil)
		})
	}
	h.expectError(401, "AUTHENTICATION_REQUIRED", "GET", "/v1.0/calls", "", nil)
}

func TestAccessKeyLifecycle(t *testing.T) {
	h := newHarness(t, options{})
	c := h.newCustomer("acme")

	b := h.must(201, "POST", "/v1.0/accesskeys", c.token, map[string]any{"name": "ci", "expire": 3600})
	key := decodeJSON[struct {
		ID         string    `json:"id"`
		CustomerID string    `json:"customer_id"`
		Token      string    `json:"token"`
		TMExpire   time.Time `json:"tm_expire"`
	}](t, b)
	if !strings.HasPrefix(key.Token, "vb_") || key.CustomerID != c.id || time.Until(key.TMExpire) < 59*time.Minute {
		t.Fatalf("created key = %+v", key)
	}
	var stored []byte
	if err := h.db.QueryRow("SELECT token_hash FROM customer_accesskeys").Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if want := identity.HashAccessKey(key.Token); string(stored) != string(want[:]) {
		t.Fatal("the stored token is not the SHA-256 of the key")
	}

	// The key works as a Bearer and as ?accesskey=, and acts for its customer.
	got := decodeJSON[map[string]any](t, h.must(200, "GET", "/v1.0/customer", key.Token, nil))
	if got["id"] != c.id {
		t.Fatalf("customer by key = %v", got)
	}
	h.must(200, "GET", "/v1.0/calls?accesskey="+key.Token, "", nil)

	// Shown once: reads never carry the token.
	for _, path := range []string{"/v1.0/accesskeys", "/v1.0/accesskeys/" + key.ID} {
		if b := h.must(200, "GET", path, c.token, nil); strings.Contains(string(b), key.Token) || strings.Contains(string(b), `"token"`) {
			t.Fatalf("GET %s shows the token: %s", path, b)
		}
	}
	h.expectError(400, "INVALID_ARGUMENT", "POST", "/v1.0/accesskeys", c.token, map[string]any{"name": "x", "expire": 5})
	h.expectError(400, "INVALID_ARGUMENT", "POST", "/v1.0/accesskeys", c.token, map[string]any{"name": "", "expire": 3600})

	h.must(200, "DELETE", "/v1.0/accesskeys/"+key.ID, c.token, nil)
	h.expectError(401, "INVALID_CREDENTIALS", "GET", "/v1.0/customer", key.Token, nil)
	h.expectError(404, "ACCESSKEY_NOT_FOUND", "GET", "/v1.0/accesskeys/"+key.ID, c.token, nil)
	h.expectError(404, "ACCESSKEY_NOT_FOUND", "DELETE", "/v1.0/accesskeys/"+key.ID, c.token, nil)
}

func TestCustomers(t *testing.T) {
	h := newHarness(t, options{})
	a := h.newCustomer("acme")
	h.newCustomer("bravo")

	// customer.created went to the outbox with the customer.
	var n int
	if err := h.db.QueryRow("SELECT COUNT(*) FROM customer_outbox WHERE routing_key = ?", "customer_id."+a.id+".customer.created").Scan(&n); err != nil || n != 1 {
		t.Fatalf("customer.created rows for %s: %d, %v", a.id, n, err)
	}
	h.expectError(409, "USERNAME_TAKEN", "POST", "/v1.0/customers", h.root, map[string]string{"name": "again", "username": a.username, "password": "password-123"})
	h.expectError(403, "PERMISSION_DENIED", "POST", "/v1.0/customers", a.token, map[string]string{"name": "x", "username": "xyz-abc", "password": "password-123"})
	h.expectError(403, "PERMISSION_DENIED", "GET", "/v1.0/customers", a.token, nil)
	e := h.expectError(400, "INVALID_ARGUMENT", "POST", "/v1.0/customers", h.root, map[string]string{"name": "x", "username": "xyz-abc", "password": "short"})
	if e.Details[0]["field"] != "password" {
		t.Fatalf("details = %v", e.Details)
	}

	// Superadmin pages through every customer.
	seen := map[string]bool{}
	token := ""
	for range 10 {
		b := h.must(200, "GET", "/v1.0/customers?page_size=1&page_token="+token, h.root, nil)
		page := decodeJSON[struct {
			Result []struct {
				ID string `json:"id"`
			} `json:"result"`
			NextPageToken string `json:"next_page_token"`
		}](t, b)
		for _, c := range page.Result {
			seen[c.ID] = true
		}
		if token = page.NextPageToken; token == "" {
			break
		}
	}
	if len(seen) != 2 || !seen[a.id] {
		t.Fatalf("paged customers = %v", seen)
	}
	h.must(200, "GET", "/v1.0/customers/"+a.id, h.root, nil)
	h.must(200, "GET", "/v1.0/customers/"+a.id, a.token, nil)
	if got := decodeJSON[map[string]any](t, h.must(200, "GET", "/v1.0/customer", a.token, nil)); got["id"] != a.id {
		t.Fatalf("own customer = %v", got)
	}
	h.expectError(404, "CUSTOMER_NOT_FOUND", "GET", "/v1.0/customer", h.root, nil)
}

// TestDeletedKeyStopsWithinFiveSeconds deletes a cached key behind the cache's back (as when an
// instance could not reach Redis while deleting it): the key must still stop working within 5 s.
func TestDeletedKeyStopsWithinFiveSeconds(t *testing.T) {
	t.Parallel()
	h := newHarness(t, options{})
	c := h.newCustomer("acme")
	key := decodeJSON[map[string]any](t, h.must(201, "POST", "/v1.0/accesskeys", c.token, map[string]any{"name": "ci", "expire": 3600}))["token"].(string)
	h.must(200, "GET", "/v1.0/customer", key, nil) // now cached
	if _, err := h.db.Exec("UPDATE customer_accesskeys SET tm_delete = UTC_TIMESTAMP(6)"); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	testenv.Eventually(t, 6*time.Second, "the deleted key to be refused", func() bool {
		resp, _ := h.do("GET", "/v1.0/customer", key, nil)
		return resp.StatusCode == 401
	})
	if took := time.Since(deleted); took > 5*time.Second+500*time.Millisecond {
		t.Fatalf("the key worked for %s after its deletion", took)
	}
}
