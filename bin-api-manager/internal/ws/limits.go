package ws

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"voipbin/pkg/apierr"
	"voipbin/pkg/telemetry"
)

// ReasonConnectionLimit refuses an upgrade (429, Retry-After) when the customer or the client
// address already holds the most connections allowed.
const ReasonConnectionLimit = "WEBSOCKET_CONNECTION_LIMIT"

// connRetryAfter is the Retry-After of a refused upgrade, in seconds: connections last long, so a
// slot rarely frees up within a second.
const connRetryAfter = "5"

// leaseTimeout bounds a lease call, so a slow Redis delays an upgrade by at most this much.
const leaseTimeout = 250 * time.Millisecond

// ConnLeases counts connections across every instance (cache.Leases over Redis implements it):
// one lease per connection on its customer's key and its address's key, renewed while it lives.
type ConnLeases interface {
	// Acquire takes member's lease on every key unless one holds its limit (0: none); full is
	// -1 when taken, or the index of the full key.
	Acquire(ctx context.Context, keys []string, limits []int, member string) (full int, err error)
	Renew(ctx context.Context, keys []string, member string) error
	Release(ctx context.Context, keys []string, member string) error
	TTL() time.Duration
}

// connLimits caps connections per customer and per client address. With leases (Redis) the caps
// hold across the cluster; this instance's own connections are always counted too, and when Redis
// cannot answer those local counts alone enforce the caps (per instance) instead of lifting them.
type connLimits struct {
	perCustomer, perIP int // 0: no limit
	leases             ConnLeases
	log                *slog.Logger
	leaseErrors        func()

	mu         sync.Mutex
	byCustomer map[string]int
	byIP       map[string]int

	lastWarn atomic.Int64
}

func newConnLimits(perCustomer, perIP int, leases ConnLeases, log *slog.Logger, leaseErrors func()) *connLimits {
	return &connLimits{perCustomer: perCustomer, perIP: perIP, leases: leases, log: log, leaseErrors: leaseErrors,
		byCustomer: map[string]int{}, byIP: map[string]int{}}
}

func refusal(scope string, limit int) error {
	what := "this customer"
	if scope == "ip" {
		what = "this address"
	}
	return apierr.Newf(apierr.ResourceExhausted, ReasonConnectionLimit,
		"%s already has %d WebSocket connections open, the most allowed", what, limit)
}

// take counts a connection of ident from ip, or refuses it with the scope that is full. A
// superadmin belongs to no customer and is limited per address only. release gives it back.
func (l *connLimits) take(ctx context.Context, ident Identity, ip string) (release func(), scope string, err error) {
	cust := ident.CustomerID
	if l.perIP <= 0 && (cust == "" || l.perCustomer <= 0) {
		return func() {}, "", nil
	}
	if scope, limit := l.takeLocal(cust, ip); scope != "" {
		return nil, scope, refusal(scope, limit)
	}
	releaseLocal := l.releaseLocal(cust, ip)
	if l.leases == nil {
		return releaseLocal, "", nil
	}
	keys, limits, scopes := []string{"ip:" + ip}, []int{l.perIP}, []string{"ip"}
	if cust != "" {
		keys, limits, scopes = append(keys, "customer:"+cust), append(limits, l.perCustomer), append(scopes, "customer")
	}
	member := telemetry.NewRequestID()
	lctx, cancel := context.WithTimeout(ctx, leaseTimeout)
	full, err := l.leases.Acquire(lctx, keys, limits, member)
	cancel()
	if err != nil {
		l.failed(ctx, err) // counted on this instance only
		return releaseLocal, "", nil
	}
	if full >= 0 {
		releaseLocal()
		return nil, scopes[full], refusal(scopes[full], limits[full])
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // renews the lease until the connection ends
		defer close(done)
		t := time.NewTicker(l.leases.TTL() / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaseTimeout)
				if err := l.leases.Renew(rctx, keys, member); err != nil {
					l.failed(ctx, err)
				}
				cancel()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(stop)
			<-done
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			if err := l.leases.Release(rctx, keys, member); err != nil {
				l.failed(ctx, err) // the lease ends by itself within its TTL
			}
			cancel()
			releaseLocal()
		})
	}, "", nil
}

func (l *connLimits) takeLocal(cust, ip string) (fullScope string, limit int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perIP > 0 && l.byIP[ip] >= l.perIP {
		return "ip", l.perIP
	}
	if cust != "" && l.perCustomer > 0 && l.byCustomer[cust] >= l.perCustomer {
		return "customer", l.perCustomer
	}
	l.byIP[ip]++
	if cust != "" {
		l.byCustomer[cust]++
	}
	return "", 0
}

func (l *connLimits) releaseLocal(cust, ip string) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.byIP[ip]--; l.byIP[ip] <= 0 {
				delete(l.byIP, ip)
			}
			if cust != "" {
				if l.byCustomer[cust]--; l.byCustomer[cust] <= 0 {
					delete(l.byCustomer, cust)
				}
			}
		})
	}
}

func (l *connLimits) failed(ctx context.Context, err error) {
	l.leaseErrors()
	now := time.Now().Unix()
	if now-l.lastWarn.Load() >= 10 {
		l.lastWarn.Store(now)
		l.log.WarnContext(ctx, "websocket connection leases unavailable, capping per instance", "error", err)
	}
}

// remoteIP is the TCP peer's address (forwarded headers are not trusted, as in the REST API).
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
