package ws

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"voipbin/pkg/apierr"
	"voipbin/pkg/testenv"
)

// credentialAuth gives every socket the expiry and check the test controls.
func credentialAuth(expires time.Time, check func(context.Context) error) func(*Handler) {
	return func(h *Handler) {
		h.auth = AuthFunc(func(*http.Request) (Identity, error) {
			return Identity{CustomerID: "c1", Expires: expires, Check: check}, nil
		})
	}
}

func TestSocketsLiveNoLongerThanTheirCredential(t *testing.T) {
	t.Parallel()
	conn := testenv.Rabbit(t)
	var revoked, down atomic.Bool
	var good atomic.Int64
	check := func(context.Context) error {
		switch {
		case revoked.Load():
			return apierr.New(apierr.Unauthenticated, "CREDENTIALS_REVOKED", "the access key was deleted")
		case down.Load():
			return apierr.New(apierr.Unavailable, "SERVICE_UNAVAILABLE", "mysql down")
		}
		good.Add(1)
		return nil
	}

	t.Run("expired", func(t *testing.T) {
		exp := time.Now().Add(time.Second)
		s := newStackOn(t, conn, Options{}, credentialAuth(exp, check))
		c := s.dial(t, "x")
		c.subscribe("customer_id:c1:call")
		ce := c.closeError(5 * time.Second)
		if ce.Code != CloseCredentialsExpired || !strings.HasPrefix(ce.Text, ReasonCredentialsExpired+": ") || time.Now().Before(exp) {
			t.Fatalf("closed %d %q at %s, want 4001 after %s", ce.Code, ce.Text, time.Now(), exp)
		}
		eventually(t, "the disconnection counted as credentials_expired", func() bool {
			return s.metric(t, "ws_disconnections_total", "reason", causeExpired) == 1
		})
	})
	t.Run("revoked, re-checked at once on Revalidate", func(t *testing.T) {
		s := newStackOn(t, conn, Options{RevalidateInterval: time.Hour}, credentialAuth(time.Time{}, check))
		c := s.dial(t, "x")
		c.subscribe("customer_id:c1:call")
		revoked.Store(true)
		defer revoked.Store(false)
		start := time.Now()
		s.h.Revalidate()
		ce := c.closeError(5 * time.Second)
		if ce.Code != CloseCredentialsRevoked || ce.Text != ReasonCredentialsRevoked+": the access key was deleted" {
			t.Fatalf("closed %d %q, want 4003", ce.Code, ce.Text)
		}
		if took := time.Since(start); took > time.Second {
			t.Fatalf("closed %s after Revalidate", took)
		}
	})
	t.Run("revoked, found by the periodic check", func(t *testing.T) {
		s := newStackOn(t, conn, Options{RevalidateInterval: 200 * time.Millisecond}, credentialAuth(time.Time{}, check))
		c := s.dial(t, "x")
		revoked.Store(true)
		defer revoked.Store(false)
		if ce := c.closeError(5 * time.Second); ce.Code != CloseCredentialsRevoked {
			t.Fatalf("closed %d %q, want 4003", ce.Code, ce.Text)
		}
	})
	t.Run("unverifiable past the grace", func(t *testing.T) {
		s := newStackOn(t, conn, Options{RevalidateInterval: 100 * time.Millisecond, RevalidateGrace: 600 * time.Millisecond},
			credentialAuth(time.Time{}, check))
		c := s.dial(t, "x")
		before := good.Load()
		eventually(t, "a good check of the socket", func() bool { return good.Load() > before })
		down.Store(true)
		defer down.Store(false)
		start := time.Now()
		ce := c.closeError(5 * time.Second)
		if ce.Code != websocket.CloseTryAgainLater || time.Since(start) < 300*time.Millisecond {
			t.Fatalf("closed %d %q after %s, want 1013 after the grace", ce.Code, ce.Text, time.Since(start))
		}
	})
}
