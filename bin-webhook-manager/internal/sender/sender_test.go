package sender

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"voipbin/bin-webhook-manager/internal/netguard"
	"voipbin/bin-webhook-manager/internal/webhook"
)

func loopbackAllowed() *Sender {
	return New(netguard.New([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, nil).Control)
}

func TestSend(t *testing.T) {
	var gotHeader http.Header
	var gotBody, gotMethod string
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		gotHeader, gotMethod = r.Header.Clone(), r.Method
		b, _ := io.ReadAll(r.Body)
		gotBody = string(b)
		w.WriteHeader(202)
		_, _ = io.WriteString(w, strings.Repeat("x", 5000))
	})
	mux.HandleFunc("/busy", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(429)
	})
	mux.HandleFunc("/moved", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ok", http.StatusFound)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	s := loopbackAllowed()

	res := s.Send(context.Background(), webhook.Request{Method: "PUT", URI: srv.URL + "/ok", Body: []byte(`{"a":1}`),
		Header: map[string]string{"X-VoIPBIN-Signature": "abc", "webhook-id": "e1"}})
	if res.Err != nil || res.StatusCode != 202 || len(res.Body) != webhook.MaxResponseBytes || res.Latency <= 0 {
		t.Fatalf("Send = status %d, %d body bytes, latency %s, err %v", res.StatusCode, len(res.Body), res.Latency, res.Err)
	}
	if gotMethod != "PUT" || gotBody != `{"a":1}` || gotHeader.Get("X-VoIPBIN-Signature") != "abc" || gotHeader.Get("Webhook-Id") != "e1" ||
		gotHeader.Get("User-Agent") != UserAgent {
		t.Fatalf("receiver got %s %q %v", gotMethod, gotBody, gotHeader)
	}

	if res := s.Send(context.Background(), webhook.Request{Method: "POST", URI: srv.URL + "/busy"}); res.StatusCode != 429 || res.RetryAfter != "30" {
		t.Fatalf("busy: %+v", res)
	}
	if res := s.Send(context.Background(), webhook.Request{Method: "POST", URI: srv.URL + "/moved"}); res.StatusCode != 302 {
		t.Fatalf("redirect was followed: %+v", res)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if res := s.Send(ctx, webhook.Request{Method: "POST", URI: srv.URL + "/slow"}); !errors.Is(res.Err, context.DeadlineExceeded) || res.StatusCode != 0 {
		t.Fatalf("slow: %+v, want a deadline error", res)
	}
}

func TestSendRefusesForbiddenTargetsAtDialTime(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("a request reached a forbidden target")
	}))
	defer srv.Close()
	s := New(netguard.New(nil, nil).Control) // loopback not allowed
	// "localhost" is a name: only the dial-time check sees that it leads to loopback.
	uri := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)
	res := s.Send(context.Background(), webhook.Request{Method: "POST", URI: uri})
	if !errors.Is(res.Err, webhook.ErrTargetForbidden) {
		t.Fatalf("Send = %+v, want ErrTargetForbidden", res)
	}
}
