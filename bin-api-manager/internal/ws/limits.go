package ws

import (
	"net"
	"net/http"
	"sync"

	"voipbin/pkg/apierr"
)

// ReasonConnectionLimit refuses an upgrade (429, Retry-After) when the customer or the client
// address already holds the most connections allowed on this instance.
const ReasonConnectionLimit = "WEBSOCKET_CONNECTION_LIMIT"

// connRetryAfter is the Retry-After of a refused upgrade, in seconds: connections last long, so a
// slot rarely frees up within a second.
const connRetryAfter = "5"

// connLimits counts this instance's open connections per customer and per client address. The
// counts are per instance (documented): they need no shared store, cannot leak when an instance
// dies, and behind a balancer spreading connections the cluster-wide cap is the instance count
// times these.
type connLimits struct {
	perCustomer, perIP int // 0: no limit

	mu         sync.Mutex
	byCustomer map[string]int
	byIP       map[string]int
}

func newConnLimits(perCustomer, perIP int) *connLimits {
	return &connLimits{perCustomer: perCustomer, perIP: perIP, byCustomer: map[string]int{}, byIP: map[string]int{}}
}

// take counts a connection of ident from ip, or refuses it with the scope that is full. A
// superadmin belongs to no customer and is limited per address only. release gives it back.
func (l *connLimits) take(ident Identity, ip string) (release func(), scope string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	cust := ident.CustomerID
	if l.perIP > 0 && l.byIP[ip] >= l.perIP {
		return nil, "ip", apierr.Newf(apierr.ResourceExhausted, ReasonConnectionLimit,
			"this address already has %d WebSocket connections open, the most allowed", l.perIP)
	}
	if cust != "" && l.perCustomer > 0 && l.byCustomer[cust] >= l.perCustomer {
		return nil, "customer", apierr.Newf(apierr.ResourceExhausted, ReasonConnectionLimit,
			"this customer already has %d WebSocket connections open, the most allowed", l.perCustomer)
	}
	l.byIP[ip]++
	if cust != "" {
		l.byCustomer[cust]++
	}
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
	}, "", nil
}

// remoteIP is the TCP peer's address (forwarded headers are not trusted, as in the REST API).
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
