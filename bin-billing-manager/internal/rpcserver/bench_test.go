package rpcserver_test

import (
	"context"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/pkg/billingapi"
)

// callsPerAccount bounds the reservations one account holds during the benchmark: a customer
// with up to this many calls in progress (the gate sums them under the account's lock).
const callsPerAccount = 200

// BenchmarkGate measures the balance gate as the call manager uses it: billingapi.Client.Gate
// through the real RPC (RabbitMQ direct reply-to) and a MariaDB transaction that locks the
// account, sums its active reservations and inserts one. Every op is a new call; p50-ms and
// p99-ms are the latencies of single requests.
//
//	go test ./bin-billing-manager/internal/rpcserver -run '^$' -bench Gate -count 6
func BenchmarkGate(b *testing.B) {
	s := newStack(b, 1_000_000_000_000)
	gate := func(b *testing.B, customers []string, pick func(i int64) int, lat []time.Duration, next *atomic.Int64) {
		i := next.Add(1) - 1
		start := time.Now()
		_, err := s.client.Gate(context.Background(), billingapi.GateRequest{CustomerID: customers[pick(i)], CallID: uuid.NewString(), DestinationType: "tel"})
		if err != nil {
			b.Fatal(err)
		}
		lat[i] = time.Since(start)
	}
	// accounts opens enough accounts for b.N calls.
	accounts := func(b *testing.B, n int) []string {
		b.Helper()
		out := make([]string, n)
		for i := range out {
			out[i], _ = s.customer(b)
		}
		return out
	}
	report := func(b *testing.B, lat []time.Duration) {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	}
	run := func(name string, parallel bool, pick func(n int) func(i int64) int) {
		b.Run(name, func(b *testing.B) {
			customers := accounts(b, b.N/callsPerAccount+32)
			lat := make([]time.Duration, b.N)
			var next atomic.Int64
			p := pick(len(customers))
			b.ResetTimer()
			if parallel {
				b.SetParallelism(32 / max(1, testingProcs()))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						gate(b, customers, p, lat, &next)
					}
				})
			} else {
				for range b.N {
					gate(b, customers, p, lat, &next)
				}
			}
			b.StopTimer()
			report(b, lat)
		})
	}
	// Consecutive calls share an account: parallel requests queue on its row lock.
	sameAccount := func(int) func(i int64) int { return func(i int64) int { return int(i / callsPerAccount) } }
	// Calls spread over accounts: parallel requests lock different rows.
	spread := func(n int) func(i int64) int { return func(i int64) int { return int(i % int64(n)) } }
	run("sequential", false, sameAccount)
	run("parallel32/one-customer", true, sameAccount)
	run("parallel32/many-customers", true, spread)
}

func testingProcs() int { return runtime.GOMAXPROCS(0) }
