package mysql_test

import (
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"voipbin/bin-billing-manager/internal/billing"
)

// callsPerAccount bounds the reservations one account holds during a benchmark: a customer with
// up to this many calls in progress.
const callsPerAccount = 200

type benchCall struct{ customer, call string }

// BenchmarkStore measures the two transactions on the money path against MariaDB, without the
// broker: the gate (lock the account, sum its active reservations, reserve) and the charge of an
// ended call (lock the account, check the ledger, debit, write the entry, release the reservation,
// add billing.charged and billing.account_updated to the outbox). Each charge is of a call that
// passed the gate, as in production.
//
//	go test ./bin-billing-manager/internal/mysql -run '^$' -bench Store -count 6
func BenchmarkStore(b *testing.B) {
	e := newEnv(b, policy(1_000_000_000_000))
	customers := func(b *testing.B, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i], _ = e.customer(b)
		}
		return out
	}
	// calls makes n calls spread over accounts (at most callsPerAccount each), optionally gated.
	calls := func(b *testing.B, n int, gated bool) []benchCall {
		cs := customers(b, n/callsPerAccount+32)
		out := make([]benchCall, n)
		for i := range out {
			out[i] = benchCall{customer: cs[i%len(cs)], call: uuid.NewString()}
			if gated {
				if _, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: out[i].customer, CallID: out[i].call, DestinationType: "tel"}); err != nil {
					b.Fatal(err)
				}
			}
		}
		return out
	}
	gate := func(b *testing.B, c benchCall) {
		if _, err := e.svc.Gate(bg(), billing.GateRequest{CustomerID: c.customer, CallID: c.call, DestinationType: "tel"}); err != nil {
			b.Fatal(err)
		}
	}
	charge := func(b *testing.B, c benchCall) {
		res, err := e.svc.ChargeCall(bg(), billing.CallEnded{CallID: c.call, CustomerID: c.customer, DestinationType: "tel", Duration: 95})
		if err != nil || res.Outcome != billing.OutcomeCharged {
			b.Fatalf("charge = %+v, %v", res, err)
		}
	}
	bench := func(name string, gated bool, op func(*testing.B, benchCall)) {
		for _, parallel := range []bool{false, true} {
			sub := name + "/sequential"
			if parallel {
				sub = name + "/parallel32"
			}
			b.Run(sub, func(b *testing.B) {
				cs := calls(b, b.N, gated)
				lat := make([]time.Duration, b.N)
				var next atomic.Int64
				do := func() {
					i := next.Add(1) - 1
					start := time.Now()
					op(b, cs[i])
					lat[i] = time.Since(start)
				}
				b.ResetTimer()
				if parallel {
					b.SetParallelism(32 / max(1, runtime.GOMAXPROCS(0)))
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							do()
						}
					})
				} else {
					for range b.N {
						do()
					}
				}
				b.StopTimer()
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			})
		}
	}
	bench("gate", false, gate)
	bench("charge", true, charge)
}
