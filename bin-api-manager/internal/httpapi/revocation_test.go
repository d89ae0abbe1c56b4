package httpapi_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"voipbin/bin-api-manager/internal/ws"
	"voipbin/pkg/testenv"
)

// socket is a real WebSocket client on /v1.0/ws, subscribed to its customer's calls.
type socket struct {
	t    *testing.T
	conn *websocket.Conn
}

// dialWS opens a socket with credential (a JWT or an access key, in the query) and subscribes
// to customerID's call events, waiting for the ack.
func (h *harness) dialWS(t *testing.T, credential, customerID string) *socket {
	t.Helper()
	param := "token"
	if strings.HasPrefix(credential, "vb_") {
		param = "accesskey"
	}
	url := "ws" + strings.TrimPrefix(h.url, "http") + "/v1.0/ws?" + param + "=" + credential
	c, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial: %v (HTTP %d)", err, status)
	}
	t.Cleanup(func() { _ = c.Close() })
	sub, _ := json.Marshal(map[string]any{"type": "subscribe", "id": "s1", "topics": []string{"customer_id:" + customerID + ":call"}})
	if err := c.WriteMessage(websocket.TextMessage, sub); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, ack, err := c.ReadMessage()
	if err != nil || !strings.Contains(string(ack), `"ack"`) {
		t.Fatalf("subscribe: %s, %v", ack, err)
	}
	return &socket{t: t, conn: c}
}

// closed reads until the server closes the socket (at most within), and returns the close code,
// its reason and when it came.
func (s *socket) closed(within time.Duration) (code int, reason string, at time.Time) {
	s.t.Helper()
	_ = s.conn.SetReadDeadline(time.Now().Add(within))
	for {
		_, _, err := s.conn.ReadMessage()
		if err == nil {
			continue // an event
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			s.t.Fatalf("the socket was not closed with a close frame within %s: %v", within, err)
		}
		return ce.Code, ce.Text, time.Now()
	}
}

// expectClosed waits for the close and checks its code and reason.
func (s *socket) expectClosed(within time.Duration, wantCode int, wantReason string) time.Time {
	s.t.Helper()
	code, reason, at := s.closed(within)
	if code != wantCode || !strings.HasPrefix(reason, wantReason+": ") {
		s.t.Fatalf("closed with %d %q, want %d %s: …", code, reason, wantCode, wantReason)
	}
	return at
}

// subject is the sub claim of a JWT (read without verification).
func subject(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	return decodeJSON[map[string]any](t, b)["sub"].(string)
}

// newUser creates a user of c through the API and logs it in, returning its id and token.
func (h *harness) newUser(c customer, name string, permission int) (string, string) {
	h.t.Helper()
	username := strings.ToLower(strings.ReplaceAll(testenv.Name(name), "_", "-"))
	b := h.must(201, "POST", "/v1.0/users", c.token, map[string]any{"username": username, "password": "password-123", "permission": permission})
	id := decodeJSON[map[string]any](h.t, b)["id"].(string)
	login := h.must(200, "POST", "/auth/login", "", map[string]string{"username": username, "password": "password-123"})
	return id, decodeJSON[map[string]any](h.t, login)["token"].(string)
}

func (h *harness) newKey(token string, expire int) (id, key string) {
	h.t.Helper()
	b := decodeJSON[map[string]any](h.t, h.must(201, "POST", "/v1.0/accesskeys", token, map[string]any{"name": "ci", "expire": expire}))
	return b["id"].(string), b["token"].(string)
}

// refusedWithin polls GET /v1.0/customer with credential until it is answered 401
// CREDENTIALS_REVOKED or INVALID_CREDENTIALS, and returns how long that took.
func (h *harness) refusedWithin(t *testing.T, limit time.Duration, credential string, reasons ...string) time.Duration {
	t.Helper()
	start := time.Now()
	testenv.Eventually(t, limit, "the revoked credential to be refused", func() bool {
		resp, b := h.do("GET", "/v1.0/customer", credential, nil)
		if resp.StatusCode != 401 {
			return false
		}
		got := decodeError(t, b).Reason
		for _, r := range reasons {
			if got == r {
				return true
			}
		}
		t.Fatalf("refused with %s, want one of %v", got, reasons)
		return false
	})
	return time.Since(start)
}

// TestWebSocketOfADeletedKeyIsClosed: a socket opened with an access key is closed with 4003
// CREDENTIALS_REVOKED as soon as the key is deleted.
func TestWebSocketOfADeletedKeyIsClosed(t *testing.T) {
	t.Parallel()
	h := newHarness(t, options{ws: true})
	c := h.newCustomer("acme")
	keyID, key := h.newKey(c.token, 3600)
	s := h.dialWS(t, key, c.id)

	start := time.Now()
	h.must(200, "DELETE", "/v1.0/accesskeys/"+keyID, c.token, nil)
	at := s.expectClosed(5*time.Second, ws.CloseCredentialsRevoked, ws.ReasonCredentialsRevoked)
	if took := at.Sub(start); took > 2*time.Second {
		t.Fatalf("closed %s after the deletion, want within 2 s", took)
	}
	t.Logf("socket closed %s after the key's deletion", at.Sub(start).Round(time.Millisecond))
	h.expectError(401, "INVALID_CREDENTIALS", "GET", "/v1.0/customer", key, nil)
}

// TestWebSocketIsClosedWhenItsTokenExpires: a socket opened with a JWT that expires in about 2 s
// is closed with 4001 CREDENTIALS_EXPIRED at that moment.
func TestWebSocketIsClosedWhenItsTokenExpires(t *testing.T) {
	t.Parallel()
	h := newHarness(t, options{ws: true})
	c := h.newCustomer("acme")
	exp := time.Now().Add(3 * time.Second).Truncate(time.Second) // 2-3 s from now, in whole seconds as JWTs are
	token := forge(t, jwt.SigningMethodHS256, jwtSecret, jwt.MapClaims{"sub": subject(t, c.token), "customer_id": c.id,
		"permission": 32, "iat": time.Now().Unix(), "exp": exp.Unix()})
	s := h.dialWS(t, token, c.id)
	at := s.expectClosed(10*time.Second, ws.CloseCredentialsExpired, ws.ReasonCredentialsExpired)
	if at.Before(exp.Add(-50*time.Millisecond)) || at.After(exp.Add(time.Second)) {
		t.Fatalf("closed at %s, the token expired at %s", at.Format(time.StampMilli), exp.Format(time.StampMilli))
	}
	t.Logf("socket closed %s after the token's expiry", at.Sub(exp).Round(time.Millisecond))
}

// TestDeletedOrDowngradedUserIsRevokedAtOnce: the JWT of a deleted or downgraded user is refused
// at once, its keys with it, and its open socket is closed with 4003.
func TestDeletedOrDowngradedUserIsRevokedAtOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, options{ws: true})
	c := h.newCustomer("acme")
	tests := []struct {
		name   string
		change func(userID string)
	}{
		{"deleted", func(id string) { h.must(200, "DELETE", "/v1.0/users/"+id, c.token, nil) }},
		{"downgraded", func(id string) {
			h.must(200, "PUT", "/v1.0/users/"+id+"/permission", h.root, map[string]any{"permission": 64})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			userID, token := h.newUser(c, "ops", 32)
			_, key := h.newKey(token, 3600)
			h.must(200, "GET", "/v1.0/customer", token, nil) // cached from here on
			h.must(200, "GET", "/v1.0/customer", key, nil)
			s := h.dialWS(t, token, c.id)

			start := time.Now()
			tt.change(userID)
			took := h.refusedWithin(t, 2*time.Second, token, "CREDENTIALS_REVOKED")
			h.refusedWithin(t, 2*time.Second, key, "CREDENTIALS_REVOKED", "INVALID_CREDENTIALS")
			at := s.expectClosed(5*time.Second, ws.CloseCredentialsRevoked, ws.ReasonCredentialsRevoked)
			if at.Sub(start) > 2*time.Second {
				t.Fatalf("socket closed %s after the change, want within 2 s", at.Sub(start))
			}
			t.Logf("token refused after %s, socket closed after %s", took.Round(time.Millisecond), at.Sub(start).Round(time.Millisecond))
		})
	}
	// After a downgrade, a new login works with the new permission.
	_, token := h.newUser(c, "ops", 32)
	h.must(200, "GET", "/v1.0/customer", token, nil)
}

// TestKeyCreatedByAKeyDiesWithItsParent: a key created with an access key records its parent,
// cannot outlive it, and is deleted with it (and its socket closed).
func TestKeyCreatedByAKeyDiesWithItsParent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, options{ws: true})
	c := h.newCustomer("acme")
	parentID, parent := h.newKey(c.token, 3600)
	h.expectError(400, "INVALID_ARGUMENT", "POST", "/v1.0/accesskeys", parent, map[string]any{"name": "longer", "expire": 7200})
	b := decodeJSON[map[string]any](t, h.must(201, "POST", "/v1.0/accesskeys", parent, map[string]any{"name": "child", "expire": 600}))
	childID, child := b["id"].(string), b["token"].(string)
	if b["parent_key_id"] != parentID {
		t.Fatalf("child parent_key_id = %v, want %s", b["parent_key_id"], parentID)
	}
	grand := decodeJSON[map[string]any](t, h.must(201, "POST", "/v1.0/accesskeys", child, map[string]any{"name": "grandchild", "expire": 300}))["token"].(string)
	h.must(200, "GET", "/v1.0/customer", child, nil)
	s := h.dialWS(t, child, c.id)

	h.must(200, "DELETE", "/v1.0/accesskeys/"+parentID, c.token, nil)
	h.refusedWithin(t, 2*time.Second, child, "INVALID_CREDENTIALS")
	h.refusedWithin(t, 2*time.Second, grand, "INVALID_CREDENTIALS")
	h.expectError(404, "ACCESSKEY_NOT_FOUND", "GET", "/v1.0/accesskeys/"+childID, c.token, nil)
	s.expectClosed(5*time.Second, ws.CloseCredentialsRevoked, ws.ReasonCredentialsRevoked)
}

// TestRevocationOnOneInstanceIsEnforcedOnTheOther: two api-manager instances share MySQL and
// Redis; a key deleted and a user downgraded through one are refused by the other at once (its
// sockets closed), although the other had them cached in memory; and wiping Redis afterwards
// (Redis losing its data) brings nothing back.
func TestRevocationOnOneInstanceIsEnforcedOnTheOther(t *testing.T) {
	t.Parallel()
	a := newHarness(t, options{ws: true})
	b := newHarness(t, options{ws: true, share: a})
	c := a.newCustomer("acme")
	keyID, key := a.newKey(c.token, 3600)
	userID, token := a.newUser(c, "ops", 32)
	for range 2 { // the second read comes from b's memory
		b.must(200, "GET", "/v1.0/customer", key, nil)
		b.must(200, "GET", "/v1.0/customer", token, nil)
	}
	keySocket := b.dialWS(t, key, c.id)
	userSocket := b.dialWS(t, token, c.id)

	start := time.Now()
	a.must(200, "DELETE", "/v1.0/accesskeys/"+keyID, c.token, nil)
	took := b.refusedWithin(t, 2*time.Second, key, "INVALID_CREDENTIALS")
	keySocket.expectClosed(5*time.Second, ws.CloseCredentialsRevoked, ws.ReasonCredentialsRevoked)
	t.Logf("key refused by the other instance after %s, its socket closed after %s", took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	start = time.Now()
	a.must(200, "PUT", "/v1.0/users/"+userID+"/permission", c.token, map[string]any{"permission": 64})
	took = b.refusedWithin(t, 2*time.Second, token, "CREDENTIALS_REVOKED")
	userSocket.expectClosed(5*time.Second, ws.CloseCredentialsRevoked, ws.ReasonCredentialsRevoked)
	t.Logf("token refused by the other instance after %s, its socket closed after %s", took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	// Redis loses everything: the revocations stand (only the store's answers are ever cached).
	keys, _ := a.rdb.Keys(context.Background(), a.prefix+"*").Result()
	if len(keys) > 0 {
		a.rdb.Del(context.Background(), keys...)
	}
	for _, h := range []*harness{a, b} {
		h.expectError(401, "INVALID_CREDENTIALS", "GET", "/v1.0/customer", key, nil)
		h.expectError(401, "CREDENTIALS_REVOKED", "GET", "/v1.0/customer", token, nil)
	}
	if resp, _ := b.do("GET", "/v1.0/customer", c.token, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("an unrelated token: %d", resp.StatusCode)
	}
}

// TestUnannouncedDowngradeStopsWithinTheTTL lowers a cached user's permission behind the cache's
// back (as when the instance that did it could not reach Redis): the token must still be refused
// within the 5 s the cache trusts an entry, from memory as from Redis.
func TestUnannouncedDowngradeStopsWithinTheTTL(t *testing.T) {
	t.Parallel()
	h := newHarness(t, options{})
	c := h.newCustomer("acme")
	h.must(200, "GET", "/v1.0/customer", c.token, nil) // cached in memory and Redis from here on
	if _, err := h.db.Exec("UPDATE customer_users SET permission = 64"); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	took := h.refusedWithin(t, 6*time.Second, c.token, "CREDENTIALS_REVOKED")
	if took > 5*time.Second+500*time.Millisecond {
		t.Fatalf("the downgraded user's token worked for %s", took)
	}
	t.Logf("refused %s after the unannounced downgrade", time.Since(changed).Round(time.Millisecond))
}
