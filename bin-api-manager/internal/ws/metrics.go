package ws

import "github.com/prometheus/client_golang/prometheus"

// Reasons an event frame is dropped (label of ws_events_dropped_total).
const (
	dropSlowConsumer = "slow_consumer" // the connection's buffer was full; the client is disconnected
	dropDisconnected = "disconnected"  // queued for a connection that closed before it was written
)

type metrics struct {
	connections   prometheus.Gauge
	subscriptions prometheus.Gauge
	bindings      prometheus.Gauge
	received      prometheus.Counter
	delivered     prometheus.Counter
	dropped       *prometheus.CounterVec
	disconnects   *prometheus.CounterVec
	gaps          prometheus.Counter
	refused       *prometheus.CounterVec
	leaseErrors   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ws_connections",
			Help: "WebSocket connections open now."}),
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ws_subscriptions",
			Help: "Topics subscribed now, summed over connections."}),
		bindings: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ws_bindings",
			Help: "Customer scopes bound to this instance's event queue now."}),
		received: prometheus.NewCounter(prometheus.CounterOpts{Name: "ws_events_received_total",
			Help: "Events taken from the broker for fan-out."}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "ws_events_delivered_total",
			Help: "Event frames written to a client socket."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ws_events_dropped_total",
			Help: "Event frames matched to a connection but not written, by reason (slow_consumer, disconnected)."}, []string{"reason"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ws_disconnections_total",
			Help: "Connections ended, by reason."}, []string{"reason"}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{Name: "ws_event_gaps_total",
			Help: "Times the event stream resumed after an interruption (each told the connected clients with an events_gap frame)."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ws_connections_refused_total",
			Help: "Upgrades refused with 429 for a full connection limit, by scope (customer, ip)."}, []string{"scope"}),
		leaseErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "ws_connection_lease_errors_total",
			Help: "Connection lease operations (Redis) that failed; connections are then capped per instance."}),
	}
	for _, r := range []string{dropSlowConsumer, dropDisconnected} {
		m.dropped.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.connections, m.subscriptions, m.bindings, m.received, m.delivered, m.dropped, m.disconnects, m.gaps, m.refused, m.leaseErrors)
	}
	return m
}
