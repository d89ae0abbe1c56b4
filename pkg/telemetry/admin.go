package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry makes a Prometheus registry with the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Check reports whether one dependency is usable; it must return within ctx's deadline.
type Check func(ctx context.Context) error

// Admin is the operator's HTTP server: /healthz answers 200 while the process runs, /readyz runs
// every check (200 only if all pass, and 503 once draining has begun), /metrics serves the registry.
type Admin struct {
	srv      *http.Server
	checks   map[string]Check
	mu       sync.Mutex
	draining bool
}

// NewAdmin makes the admin server on addr.
func NewAdmin(addr string, reg *prometheus.Registry, checks map[string]Check) *Admin {
	a := &Admin{checks: checks}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", a.ready)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	a.srv = &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return a
}

// Drain makes /readyz answer 503 so load balancers stop sending work during shutdown.
func (a *Admin) Drain() {
	a.mu.Lock()
	a.draining = true
	a.mu.Unlock()
}

func (a *Admin) ready(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	draining := a.draining
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	results := map[string]string{}
	ok := !draining
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, check := range a.checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := "ok"
			if err := check(ctx); err != nil {
				res = err.Error()
			}
			mu.Lock()
			defer mu.Unlock()
			results[name] = res
			if res != "ok" {
				ok = false
			}
		}()
	}
	wg.Wait()
	names := make([]string, 0, len(results))
	for n := range results {
		names = append(names, n)
	}
	sort.Strings(names)
	body := map[string]any{"status": "ok", "checks": results}
	code := http.StatusOK
	if !ok {
		body["status"] = "unavailable"
		code = http.StatusServiceUnavailable
	}
	if draining {
		body["status"] = "draining"
	}
	writeJSON(w, code, body)
}

// Run serves until ctx ends, then shuts down. It returns nil on a clean stop.
func (a *Admin) Run(ctx context.Context, log *slog.Logger) error {
	ln, err := net.Listen("tcp", a.srv.Addr)
	if err != nil {
		return err
	}
	log.Info("admin server listening", "address", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- a.srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// Probes are quick; what Shutdown waits for longest is a connection that was opened but never
	// sent a request (net/http treats it as idle only after 5 s). Nothing is lost by closing such
	// connections, so a stop that takes longer than a second ends them instead of failing the exit.
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err = a.srv.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = a.srv.Close()
	}
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
