package lifecycle

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"voipbin/pkg/telemetry"
)

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestStopsWorkThenTrailingThenAdmin(t *testing.T) {
	addr := freeAddr(t)
	admin := telemetry.NewAdmin(addr, telemetry.NewRegistry(), nil)
	var mu sync.Mutex
	var order []string
	note := func(s string) { mu.Lock(); order = append(order, s); mu.Unlock() }
	readyDuringDrain := make(chan int, 1)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, quiet(), Parts{
			Admin: admin,
			Work: []Task{func(ctx context.Context) error {
				<-ctx.Done()
				resp, err := http.Get("http://" + addr + "/readyz") // still served, but draining
				if err == nil {
					readyDuringDrain <- resp.StatusCode
					resp.Body.Close()
				}
				note("work finished")
				return nil
			}},
			Trailing: []Task{func(ctx context.Context) error {
				<-ctx.Done()
				note("relay stopped")
				return nil
			}},
		})
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("admin never became ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v, want nil on a clean stop", err)
	}
	if got := <-readyDuringDrain; got != http.StatusServiceUnavailable {
		t.Fatalf("/readyz while draining = %d, want 503", got)
	}
	if len(order) != 2 || order[0] != "work finished" || order[1] != "relay stopped" {
		t.Fatalf("stop order = %v, want work before the trailing relay", order)
	}
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Fatal("admin server still serving after Run returned")
	}
}

func TestFailureStopsEverythingAndIsReturned(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name  string
		parts func(stopped chan string) Parts
	}{
		{"work fails", func(stopped chan string) Parts {
			return Parts{
				Work:     []Task{func(context.Context) error { return boom }},
				Trailing: []Task{func(ctx context.Context) error { <-ctx.Done(); stopped <- "trailing"; return nil }},
			}
		}},
		{"trailing fails", func(stopped chan string) Parts {
			return Parts{
				Work:     []Task{func(ctx context.Context) error { <-ctx.Done(); stopped <- "work"; return nil }},
				Trailing: []Task{func(context.Context) error { return boom }},
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stopped := make(chan string, 1)
			p := tt.parts(stopped)
			p.Admin = telemetry.NewAdmin(freeAddr(t), telemetry.NewRegistry(), nil)
			errc := make(chan error, 1)
			go func() { errc <- Run(context.Background(), quiet(), p) }()
			select {
			case err := <-errc:
				if !errors.Is(err, boom) {
					t.Fatalf("Run = %v, want boom", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Run did not stop after a part failed")
			}
			select {
			case <-stopped:
			default:
				t.Fatal("the other part was not stopped")
			}
		})
	}
}
