package subscriber_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-billing-manager/internal/billing"
	"voipbin/pkg/amqp"
	"voipbin/pkg/event"
	"voipbin/pkg/testenv"
)

// BenchmarkChargeEvents measures the charge as it runs in production: b.N call.ended events of
// calls that passed the gate, published at once on call.events, consumed by the subscriber with
// main's default 8 workers and the Redis deduper, each charged in its own transaction whose
// billing.charged and billing.account_updated the relay publishes. The clock stops when the last
// charge is in the ledger; events/s is the throughput.
//
//	go test ./bin-billing-manager/internal/subscriber -run '^$' -bench ChargeEvents -count 6
func BenchmarkChargeEvents(b *testing.B) {
	s := startStack(b, stackOptions{initial: 1_000_000_000_000, workers: 8})
	const callsPerAccount = 200
	b.Run("8-workers", func(b *testing.B) {
		customers := make([]string, b.N/callsPerAccount+8)
		for i := range customers {
			customers[i] = uuid.NewString()
			if _, err := s.svc.OpenAccount(context.Background(), customers[i]); err != nil {
				b.Fatal(err)
			}
		}
		var before int64
		if err := s.db.QueryRow("SELECT COUNT(*) FROM billing_ledger WHERE kind = 'call'").Scan(&before); err != nil {
			b.Fatal(err)
		}
		msgs := make([]amqp.Message, b.N)
		for i := range msgs {
			cus, call := customers[i%len(customers)], uuid.NewString()
			if _, err := s.svc.Gate(context.Background(), billing.GateRequest{CustomerID: cus, CallID: call, DestinationType: "tel"}); err != nil {
				b.Fatal(err)
			}
			ev := callEnded(b, cus, call, "tel", 95)
			body, _ := json.Marshal(ev)
			msgs[i] = amqp.Message{Exchange: event.ExchangeCall, Key: event.RoutingKey(cus, ev.EventType),
				Publishing: amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent, MessageId: ev.EventID, Body: body}}
		}
		b.ResetTimer()
		start := time.Now()
		if err := s.conn.PublishBatch(context.Background(), msgs); err != nil {
			b.Fatal(err)
		}
		testenv.Eventually(b, 5*time.Minute, "every call charged", func() bool {
			var n int64
			_ = s.db.QueryRow("SELECT COUNT(*) FROM billing_ledger WHERE kind = 'call'").Scan(&n)
			return n-before >= int64(b.N)
		})
		b.StopTimer()
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	})
}
