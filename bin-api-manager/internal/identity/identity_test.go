package identity_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/crypto/bcrypt"

	"voipbin/bin-api-manager/internal/identity"
	"voipbin/pkg/apierr"
)

var (
	secretA = []byte("a-secret-of-at-least-thirty-two-bytes!!")
	secretB = []byte("b-secret-of-at-least-thirty-two-bytes!!")
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)} }

func newTokens(t *testing.T, clk *clock, keys ...identity.Key) *identity.Tokens {
	t.Helper()
	if len(keys) == 0 {
		keys = []identity.Key{{ID: "a", Secret: secretA}}
	}
	tok, err := identity.NewTokens(keys, time.Hour, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func sign(t *testing.T, m jwt.SigningMethod, kid string, key any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTokensRefuseEveryForgery(t *testing.T) {
	clk := newClock()
	tokens := newTokens(t, clk)
	user := identity.User{ID: "3f0e4b8e-0d5e-4a43-9d0b-0a1b2c3d4e5f", CustomerID: "c1", Permission: identity.PermCustomerAdmin}
	good, _, err := tokens.Issue(user)
	if err != nil {
		t.Fatal(err)
	}
	now := clk.Now().Unix()
	claims := func() jwt.MapClaims {
		return jwt.MapClaims{"sub": user.ID, "customer_id": "c1", "permission": 32, "iat": now, "exp": now + 3600}
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(good, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var m map[string]any
	_ = json.Unmarshal(payload, &m)
	m["permission"] = 1 // try to become superadmin
	forged, _ := json.Marshal(m)
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(forged) + "." + parts[2]
	noExp := claims()
	delete(noExp, "exp")

	tests := []struct {
		name  string
		token string
		want  string // "" means valid; else a substring of the error message
	}{
		{"issued token", good, ""},
		{"hand-made HS256 with the key", sign(t, jwt.SigningMethodHS256, "a", secretA, claims()), ""},
		{"expired", sign(t, jwt.SigningMethodHS256, "a", secretA, jwt.MapClaims{"sub": user.ID, "iat": now - 7200, "exp": now - 3600}), "expired"},
		{"tampered payload", tampered, "invalid token"},
		{"alg none", sign(t, jwt.SigningMethodNone, "a", jwt.UnsafeAllowNoneSignatureType, claims()), "invalid token"},
		{"HS512 with the right secret", sign(t, jwt.SigningMethodHS512, "a", secretA, claims()), "invalid token"},
		{"RS256", sign(t, jwt.SigningMethodRS256, "a", rsaKey, claims()), "invalid token"},
		{"wrong key", sign(t, jwt.SigningMethodHS256, "a", secretB, claims()), "invalid token"},
		{"unknown kid", sign(t, jwt.SigningMethodHS256, "zz", secretA, claims()), "invalid token"},
		{"no exp", sign(t, jwt.SigningMethodHS256, "a", secretA, noExp), "invalid token"},
		{"no sub", sign(t, jwt.SigningMethodHS256, "a", secretA, jwt.MapClaims{"iat": now, "exp": now + 60}), "no subject"},
		{"issued in the future", sign(t, jwt.SigningMethodHS256, "a", secretA, jwt.MapClaims{"sub": "x", "iat": now + 600, "exp": now + 3600}), "invalid token"},
		{"garbage", "not.a.jwt", "invalid token"},
		{"empty", "", "invalid token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tokens.Parse(tt.token)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Parse() error = %v, want valid", err)
				}
				if got.Subject != user.ID || got.CustomerID != "c1" || got.Permission != identity.PermCustomerAdmin {
					t.Fatalf("claims = %+v", got)
				}
				return
			}
			e, ok := apierr.As(err)
			if !ok || e.Status != apierr.Unauthenticated || e.Reason != identity.ReasonInvalidCredentials || !strings.Contains(e.Message, tt.want) {
				t.Fatalf("Parse() error = %v, want UNAUTHENTICATED/INVALID_CREDENTIALS mentioning %q", err, tt.want)
			}
		})
	}
}

func TestTokenExpiresAfterLifetime(t *testing.T) {
	clk := newClock()
	tokens := newTokens(t, clk)
	tok, exp, err := tokens.Issue(identity.User{ID: "u"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := exp.Sub(clk.Now()), time.Hour; got != want {
		t.Fatalf("lifetime = %s, want %s", got, want)
	}
	clk.Add(time.Hour - time.Second)
	if _, err := tokens.Parse(tok); err != nil {
		t.Fatalf("just before expiry: %v", err)
	}
	clk.Add(time.Minute)
	if _, err := tokens.Parse(tok); err == nil {
		t.Fatal("after expiry: token accepted")
	}
}

func TestKeyRotation(t *testing.T) {
	clk := newClock()
	old := newTokens(t, clk, identity.Key{ID: "old", Secret: secretA})
	rotated := newTokens(t, clk, identity.Key{ID: "new", Secret: secretB}, identity.Key{ID: "old", Secret: secretA})
	retired := newTokens(t, clk, identity.Key{ID: "new", Secret: secretB})

	oldTok, _, _ := old.Issue(identity.User{ID: "u"})
	newTok, _, _ := rotated.Issue(identity.User{ID: "u"})
	if _, err := rotated.Parse(oldTok); err != nil {
		t.Errorf("a token of the old key must verify during rotation: %v", err)
	}
	if _, err := retired.Parse(newTok); err != nil {
		t.Errorf("the new key signs: %v", err)
	}
	if _, err := retired.Parse(oldTok); err == nil {
		t.Error("a token of a retired key was accepted")
	}
	if _, err := identity.NewTokens([]identity.Key{{ID: "x", Secret: []byte("short")}}, time.Hour, nil); err == nil {
		t.Error("a short secret was accepted")
	}
}

type fixture struct {
	svc   *identity.Service
	store *memStore
	cache *memCache
	clk   *clock
	su    identity.Identity
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	clk := newClock()
	pw, err := identity.NewPasswords(bcrypt.MinCost, identity.HashLimit{})
	if err != nil {
		t.Fatal(err)
	}
	store, cache := newMemStore(), newMemCache()
	svc := identity.NewService(identity.Deps{Users: store, Customers: store, Keys: store, Cache: cache,
		Tokens: newTokens(t, clk), Passwords: pw, Now: clk.Now})
	return &fixture{svc: svc, store: store, cache: cache, clk: clk,
		su: identity.Identity{UserID: "su", Permission: identity.PermSuperadmin}}
}

func (f *fixture) customer(t *testing.T, username string) (identity.Customer, identity.Identity) {
	t.Helper()
	c, u, err := f.svc.CreateCustomer(context.Background(), f.su, identity.NewCustomer{Name: "Acme " + username, Username: username, Password: "password-1"})
	if err != nil {
		t.Fatal(err)
	}
	return c, identity.Identity{UserID: u.ID, CustomerID: c.ID, Permission: u.Permission}
}

func TestBootstrap(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	if _, err := f.svc.Bootstrap(ctx, "", ""); !errors.Is(err, identity.ErrNoSuperadmin) {
		t.Fatalf("without credentials: %v, want ErrNoSuperadmin", err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	created := 0
	for range 4 { // instances starting together create one user
		wg.Go(func() {
			ok, err := f.svc.Bootstrap(ctx, "admin", "admin")
			if err != nil {
				t.Errorf("Bootstrap: %v", err)
			}
			if ok {
				mu.Lock()
				created++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if created != 1 || len(f.store.users) != 1 {
		t.Fatalf("created %d, users %d; want 1 and 1", created, len(f.store.users))
	}
	if ok, err := f.svc.Bootstrap(ctx, "", ""); ok || err != nil {
		t.Fatalf("with a superadmin present: %v %v, want nothing to do", ok, err)
	}
	s, err := f.svc.Login(ctx, "admin", "admin")
	if err != nil {
		t.Fatal(err)
	}
	id, err := f.svc.Authenticate(ctx, s.Token)
	if err != nil || !id.Superadmin() || id.CustomerID != "" {
		t.Fatalf("superadmin identity = %+v, %v", id, err)
	}
}

func TestLoginAndRefresh(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	c, _ := f.customer(t, "alice")

	for _, tc := range []struct{ name, user, pass string }{
		{"wrong password", "alice", "password-2"},
		{"unknown user", "bob", "password-1"},
		{"empty", "", ""},
	} {
		if _, err := f.svc.Login(ctx, tc.user, tc.pass); err != identity.ErrInvalidCredentials {
			t.Errorf("%s: err = %v, want ErrInvalidCredentials", tc.name, err)
		}
	}
	s, err := f.svc.Login(ctx, "alice", "password-1")
	if err != nil {
		t.Fatal(err)
	}
	if s.Username != "alice" || s.Token == "" || !s.Expires.Equal(f.clk.Now().Add(time.Hour)) {
		t.Fatalf("session = %+v", s)
	}
	id, err := f.svc.Authenticate(ctx, s.Token)
	if err != nil || id.CustomerID != c.ID || id.Permission != identity.PermCustomerAdmin || id.Method != identity.MethodJWT {
		t.Fatalf("identity = %+v, %v", id, err)
	}

	f.clk.Add(30 * time.Minute)
	r, err := f.svc.Refresh(ctx, s.Token)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Expires.After(s.Expires) {
		t.Fatalf("refreshed expiry %s is not after %s", r.Expires, s.Expires)
	}
	f.clk.Add(2 * time.Hour)
	if _, err := f.svc.Refresh(ctx, r.Token); !apierr.HasReason(err, identity.ReasonInvalidCredentials) {
		t.Fatalf("refresh of an expired token: %v", err)
	}
	if _, err := f.svc.Refresh(ctx, "vb_xyz"); !apierr.HasReason(err, identity.ReasonInvalidCredentials) {
		t.Fatalf("refresh of an access key: %v", err)
	}
}

func TestAccessKeyLifecycle(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	c, admin := f.customer(t, "alice")

	k, err := f.svc.CreateAccessKey(ctx, admin, "ci", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(k.Token, "vb_") || len(k.Token) != 46 {
		t.Fatalf("token %q, want vb_ + 43 characters", k.Token)
	}
	if stored := f.store.keys[k.ID]; stored.Token != "" || stored.TokenHash != identity.HashAccessKey(k.Token) {
		t.Fatal("the store must keep only the hash")
	}
	id, err := f.svc.Authenticate(ctx, k.Token)
	if err != nil || id.CustomerID != c.ID || id.Method != identity.MethodAccessKey || id.AccessKeyID != k.ID {
		t.Fatalf("identity = %+v, %v", id, err)
	}
	if _, err := f.svc.Authenticate(ctx, k.Token); err != nil || f.store.lookups != 1 {
		t.Fatalf("second use: %v, store look-ups %d, want 1 (cached)", err, f.store.lookups)
	}

	_, other := f.customer(t, "bob")
	if _, err := f.svc.DeleteAccessKey(ctx, other, k.ID); err != identity.ErrAccessKeyNotFound {
		t.Fatalf("another customer's delete: %v, want not found", err)
	}
	if _, err := f.svc.DeleteAccessKey(ctx, admin, k.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Authenticate(ctx, k.Token); !apierr.HasReason(err, identity.ReasonInvalidCredentials) {
		t.Fatalf("deleted key: %v, want INVALID_CREDENTIALS", err)
	}

	short, err := f.svc.CreateAccessKey(ctx, admin, "short", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	f.clk.Add(time.Minute)
	if _, err := f.svc.Authenticate(ctx, short.Token); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired key: %v", err)
	}
	if _, err := f.svc.Authenticate(ctx, identity.NewAccessKeyToken()); !apierr.HasReason(err, identity.ReasonInvalidCredentials) {
		t.Fatalf("unknown key: %v", err)
	}
}

func TestPermissions(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	c, admin := f.customer(t, "alice")
	manager := identity.Identity{UserID: "m", CustomerID: c.ID, Permission: identity.PermCustomerManager}
	nobody := identity.Identity{UserID: "n", CustomerID: c.ID}

	tests := []struct {
		name   string
		caller identity.Identity
		do     func(identity.Identity) error
		want   error
	}{
		{"customer admin creates customer", admin, func(i identity.Identity) error {
			_, _, err := f.svc.CreateCustomer(ctx, i, identity.NewCustomer{Name: "x", Username: "xyz", Password: "password-1"})
			return err
		}, identity.ErrPermissionDenied},
		{"customer admin lists customers", admin, func(i identity.Identity) error { _, _, err := f.svc.Customers(ctx, i, 10, ""); return err }, identity.ErrPermissionDenied},
		{"customer admin reads own customer", admin, func(i identity.Identity) error { _, err := f.svc.Customer(ctx, i, c.ID); return err }, nil},
		{"customer admin reads another customer", admin, func(i identity.Identity) error {
			_, err := f.svc.Customer(ctx, i, "0b7e1c0a-5d33-4b8a-9a39-1f2e3d4c5b6a")
			return err
		}, identity.ErrCustomerNotFound},
		{"superadmin reads own customer", f.su, func(i identity.Identity) error { _, err := f.svc.Customer(ctx, i, c.ID); return err }, nil},
		{"manager creates key", manager, func(i identity.Identity) error { _, err := f.svc.CreateAccessKey(ctx, i, "k", time.Hour); return err }, identity.ErrPermissionDenied},
		{"manager lists keys", manager, func(i identity.Identity) error { _, err := f.svc.AccessKeys(ctx, i, ""); return err }, nil},
		{"no permission lists keys", nobody, func(i identity.Identity) error { _, err := f.svc.AccessKeys(ctx, i, ""); return err }, identity.ErrPermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.do(tt.caller); got != tt.want {
				t.Fatalf("err = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestScope(t *testing.T) {
	su := identity.Identity{Permission: identity.PermSuperadmin}
	cu := identity.Identity{CustomerID: "c1", Permission: identity.PermCustomerAdmin}
	tests := []struct {
		name      string
		caller    identity.Identity
		requested string
		want      string
		wantOK    bool
	}{
		{"superadmin, all", su, "", "", true},
		{"superadmin, one", su, "c2", "c2", true},
		{"customer, default", cu, "", "c1", true},
		{"customer, own", cu, "c1", "c1", true},
		{"customer, another", cu, "c2", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := tt.caller.Scope(tt.requested)
			if got != tt.want || ok != tt.wantOK {
				t.Fatalf("Scope(%q) = %q, %v; want %q, %v", tt.requested, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestCustomersPaging(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	want := map[string]bool{}
	for i := range 5 {
		c, _ := f.customer(t, "user"+string(rune('a'+i)))
		want[c.ID] = true
	}
	got := map[string]bool{}
	token := ""
	for pages := 0; ; pages++ {
		cs, next, err := f.svc.Customers(ctx, f.su, 2, token)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			if got[c.ID] {
				t.Fatalf("customer %s seen twice", c.ID)
			}
			got[c.ID] = true
		}
		if next == "" {
			break
		}
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		token = next
	}
	if len(got) != len(want) {
		t.Fatalf("paged over %d customers, want %d", len(got), len(want))
	}
	if _, _, err := f.svc.Customers(ctx, f.su, 2, "garbage!"); !apierr.HasReason(err, apierr.ReasonInvalidArgument) {
		t.Fatalf("bad token: %v", err)
	}
}

func TestNewCustomerValidate(t *testing.T) {
	ok := identity.NewCustomer{Name: "Acme", Email: "ops@acme.example", Username: "acme", Password: "password-1"}
	tests := []struct {
		name      string
		change    func(*identity.NewCustomer)
		wantField string
	}{
		{"valid", func(*identity.NewCustomer) {}, ""},
		{"no email is fine", func(n *identity.NewCustomer) { n.Email = "" }, ""},
		{"blank name", func(n *identity.NewCustomer) { n.Name = "  " }, "name"},
		{"bad email", func(n *identity.NewCustomer) { n.Email = "Acme <ops@acme.example>" }, "email"},
		{"short username", func(n *identity.NewCustomer) { n.Username = "ab" }, "username"},
		{"username with space", func(n *identity.NewCustomer) { n.Username = "a b c" }, "username"},
		{"short password", func(n *identity.NewCustomer) { n.Password = "short" }, "password"},
		{"long password", func(n *identity.NewCustomer) { n.Password = strings.Repeat("x", 73) }, "password"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := ok
			tt.change(&n)
			err := n.Validate()
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				return
			}
			e, isTyped := apierr.As(err)
			if !isTyped || e.Details[0]["field"] != tt.wantField {
				t.Fatalf("Validate() = %v, want a problem with %s", err, tt.wantField)
			}
		})
	}
}

func TestLoginTakesAboutTheSameTimeForUnknownUsers(t *testing.T) {
	if testing.Short() {
		t.Skip("timing test")
	}
	ctx := context.Background()
	clk := newClock()
	pw, err := identity.NewPasswords(bcrypt.DefaultCost, identity.HashLimit{})
	if err != nil {
		t.Fatal(err)
	}
	store := newMemStore()
	svc := identity.NewService(identity.Deps{Users: store, Customers: store, Keys: store, Cache: newMemCache(),
		Tokens: newTokens(t, clk), Passwords: pw, Now: clk.Now})
	su := identity.Identity{Permission: identity.PermSuperadmin}
	if _, _, err := svc.CreateCustomer(ctx, su, identity.NewCustomer{Name: "A", Username: "alice", Password: "password-1"}); err != nil {
		t.Fatal(err)
	}
	measure := func(user string) time.Duration {
		best := time.Hour
		for range 3 {
			start := time.Now()
			_, _ = svc.Login(ctx, user, "wrong-password")
			best = min(best, time.Since(start))
		}
		return best
	}
	known, unknown := measure("alice"), measure("nobody")
	ratio := float64(unknown) / float64(known)
	if ratio < 0.5 || ratio > 2 {
		t.Fatalf("failed login took %s for a known user and %s for an unknown one; want about the same", known, unknown)
	}
}
