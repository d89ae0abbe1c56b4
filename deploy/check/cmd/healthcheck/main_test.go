package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/readyz":
			io.WriteString(w, `{"status":"ok"}`)
		case "/draining":
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"status":"draining"}`)
		case "/moved":
			http.Redirect(w, r, "/readyz", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	open, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()

	tests := []struct {
		name    string
		args    []string
		wantErr string // "" for success
		wantOut string
	}{
		{"ready", []string{srv.URL + "/readyz"}, "", `200 OK {"status":"ok"}`},
		{"draining", []string{srv.URL + "/draining"}, "503 Service Unavailable", "draining"},
		{"not found", []string{srv.URL + "/nope"}, "404", ""},
		{"redirect not followed", []string{srv.URL + "/moved"}, "302", ""},
		{"nobody listening", []string{"http://" + closedAddr + "/readyz"}, "connection refused", ""},
		{"tcp open", []string{"tcp://" + open.Addr().String()}, "", "connected to"},
		{"tcp closed", []string{"tcp://" + closedAddr}, "connection refused", ""},
		{"timeout flag", []string{"-timeout", "2s", srv.URL + "/readyz"}, "", "200 OK"},
		{"no target", nil, "usage", ""},
		{"two targets", []string{srv.URL, srv.URL}, "usage", ""},
		{"bad flag", []string{"-x", srv.URL}, "usage", ""},
		{"not a URL", []string{"127.0.0.1:9100"}, "is not a URL", ""},
		{"other scheme", []string{"udp://127.0.0.1:5060"}, `scheme "udp"`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			err := run(tt.args, &out)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("run = %v, want success", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("run = %v, want an error containing %q", err, tt.wantErr)
			}
			if !strings.Contains(out.String(), tt.wantOut) {
				t.Errorf("output %q lacks %q", out.String(), tt.wantOut)
			}
		})
	}
}
