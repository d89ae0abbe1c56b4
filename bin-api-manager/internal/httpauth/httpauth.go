// Package httpauth authenticates HTTP requests: it finds the caller's credential (Authorization:
// Bearer, ?token=, ?accesskey= or the token cookie), turns it into an identity.Identity, and
// carries that identity in the request context. Both the REST router (httpapi) and the WebSocket
// endpoint use it, so every door checks credentials the same way.
package httpauth

import (
	"context"
	"net/http"
	"strings"

	"voipbin/bin-api-manager/internal/identity"
)

// CookieName is the cookie that carries a JWT for browsers.
const CookieName = "token"

// Verifier turns a credential into an identity (identity.Service implements it).
type Verifier interface {
	Authenticate(ctx context.Context, credential string) (identity.Identity, error)
}

// Authenticator authenticates requests.
type Authenticator struct{ v Verifier }

// New makes an Authenticator.
func New(v Verifier) *Authenticator { return &Authenticator{v: v} }

// Credential is the credential a request carries, looked for in order: the Authorization Bearer
// header, ?token=, ?accesskey=, then the token cookie. Another Authorization scheme (a proxy's
// Basic) is not ours and is passed over. It is "" when there is none.
func Credential(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if scheme, cred, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(cred)
		}
	}
	q := r.URL.Query()
	if t := q.Get("token"); t != "" {
		return t
	}
	if k := q.Get("accesskey"); k != "" {
		return k
	}
	if c, err := r.Cookie(CookieName); err == nil {
		return c.Value
	}
	return ""
}

// Authenticate returns the identity of the caller of r. A request without a credential is
// identity.ErrAuthenticationRequired; a bad one is UNAUTHENTICATED/INVALID_CREDENTIALS.
func (a *Authenticator) Authenticate(r *http.Request) (identity.Identity, error) {
	return a.v.Authenticate(r.Context(), Credential(r))
}

type ctxKey struct{}

// WithIdentity returns ctx carrying id.
func WithIdentity(ctx context.Context, id identity.Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext is the identity in ctx, if any.
func FromContext(ctx context.Context) (identity.Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(identity.Identity)
	return id, ok
}
