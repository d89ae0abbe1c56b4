package httpauth_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"voipbin/bin-api-manager/internal/httpauth"
	"voipbin/bin-api-manager/internal/identity"
)

func TestCredential(t *testing.T) {
	tests := []struct {
		name   string
		target string
		header string
		cookie string
		want   string
	}{
		{"none", "/x", "", "", ""},
		{"bearer", "/x", "Bearer abc", "", "abc"},
		{"bearer any case", "/x", "bearer abc", "", "abc"},
		{"basic is passed over", "/x?token=q", "Basic abc", "", "q"},
		{"query token", "/x?token=q", "", "", "q"},
		{"query accesskey", "/x?accesskey=vb_k", "", "", "vb_k"},
		{"cookie", "/x", "", "c", "c"},
		{"header wins", "/x?token=q", "Bearer h", "c", "h"},
		{"query beats cookie", "/x?accesskey=k", "", "c", "k"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, tt.target, nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			if tt.cookie != "" {
				r.AddCookie(&http.Cookie{Name: httpauth.CookieName, Value: tt.cookie})
			}
			if got := httpauth.Credential(r); got != tt.want {
				t.Fatalf("Credential() = %q, want %q", got, tt.want)
			}
		})
	}
}

type verifierFunc func(ctx context.Context, cred string) (identity.Identity, error)

func (f verifierFunc) Authenticate(ctx context.Context, cred string) (identity.Identity, error) {
	return f(ctx, cred)
}

func TestAuthenticatePassesTheCredential(t *testing.T) {
	var got string
	a := httpauth.New(verifierFunc(func(_ context.Context, cred string) (identity.Identity, error) {
		got = cred
		return identity.Identity{UserID: "u"}, nil
	}))
	r := httptest.NewRequest(http.MethodGet, "/v1.0/ws?token=abc", nil)
	id, err := a.Authenticate(r)
	if err != nil || id.UserID != "u" || got != "abc" {
		t.Fatalf("Authenticate = %+v, %v; verifier saw %q", id, err, got)
	}
	ctx := httpauth.WithIdentity(context.Background(), id)
	if back, ok := httpauth.FromContext(ctx); !ok || back != id {
		t.Fatalf("FromContext = %+v, %v", back, ok)
	}
	if _, ok := httpauth.FromContext(context.Background()); ok {
		t.Fatal("identity in an empty context")
	}
}
