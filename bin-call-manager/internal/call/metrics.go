package call

import (
	"github.com/prometheus/client_golang/prometheus"

	"voipbin/pkg/callapi"
	"voipbin/pkg/rtcapi"
)

// Metrics counts what happens to calls. RPC handling latency is measured by the rpc server.
type Metrics struct {
	created     prometheus.Counter
	ended       *prometheus.CounterVec
	transitions *prometheus.CounterVec
	rtcEvents   *prometheus.CounterVec
	reaped      *prometheus.CounterVec
	renewals    *prometheus.CounterVec
	keyed       *prometheus.CounterVec
}

// NewMetrics makes the call metrics and registers them on reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		created: prometheus.NewCounter(prometheus.CounterOpts{Name: "call_created_total",
			Help: "Calls created (one per destination)."}),
		ended: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "call_ended_total",
			Help: "Calls ended, by hangup_reason and hangup_by."}, []string{"reason", "by"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "call_transitions_total",
			Help: "Call status transitions committed, by status before and after."}, []string{"from", "to"}),
		rtcEvents: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "call_rtc_events_total",
			Help: "rtc events handled, by type and outcome (applied, unknown_call, unknown_type, error); duplicates count as applied."},
			[]string{"type", "outcome"}),
		reaped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "call_reaped_total",
			Help: "Calls the reaper ended, by why: deadline, orphan (never dialled), node_gone."}, []string{"why"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "call_quota_renewals_total",
			Help: "Quota renewal attempts by result: granted, refused (no balance), unavailable (billing not reached), " +
				"rtc_unavailable, exhausted (the call outlived its quota and was ended), ended."}, []string{"result"}),
		keyed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "call_create_keyed_total",
			Help: "Create requests with an idempotency key, by outcome: created, replayed (the calls of the first, nothing dialled), in_use, reused, taken_over (of an attempt that did not finish), failed."},
			[]string{"outcome"}),
	}
	for _, r := range []string{"granted", "refused", "unavailable", "rtc_unavailable", "exhausted", "ended"} {
		m.renewals.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.created, m.ended, m.transitions, m.rtcEvents, m.reaped, m.renewals, m.keyed)
	}
	return m
}

func (m *Metrics) observe(ev Event) {
	switch ev.Type {
	case callapi.EventCreated:
		m.created.Inc()
		return
	case callapi.EventEnded:
		m.ended.WithLabelValues(ev.Call.HangupReason, ev.Call.HangupBy).Inc()
	}
	m.transitions.WithLabelValues(string(ev.From), string(ev.To)).Inc()
}

func (m *Metrics) rtcEvent(typ, outcome string) {
	switch typ {
	case rtcapi.EventRinging, rtcapi.EventAnswered, rtcapi.EventEnded:
	default:
		typ = "other" // bounded label values
	}
	m.rtcEvents.WithLabelValues(typ, outcome).Inc()
}

func (m *Metrics) renewal(result string) { m.renewals.WithLabelValues(result).Inc() }
