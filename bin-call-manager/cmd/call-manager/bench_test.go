package main

import (
	"context"
	"runtime"
	"slices"
	"testing"
	"time"

	"voipbin/bin-call-manager/internal/cache"
	"voipbin/pkg/callapi"
	"voipbin/pkg/testenv"
)

// reportPercentiles adds p50 and p99 of the latencies, in milliseconds.
func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2])/1e6, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100])/1e6, "p99-ms")
}

// BenchmarkCreate is POST /v1/calls through RPC, one destination, with the billing gate and a stub
// rtc answering on RabbitMQ: gate RPC, insert + call.created in one transaction, cache write, dial
// RPC, node recorded (a second transaction), reply. Sequential reports p50/p99; parallel32 runs
// 32 callers and reports calls/s.
//
//	go test ./bin-call-manager/cmd/call-manager -run '^$' -bench Create -count 6
func BenchmarkCreate(b *testing.B) {
	h := newHarness(b, harnessOpts{quiet: true})
	req := callapi.CreateRequest{CustomerID: h.customerA, Source: tel("+15550000001"), Destinations: []callapi.Address{tel("+15550000002")}}
	create := func(b *testing.B) {
		if _, err := h.client.Create(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("sequential", func(b *testing.B) {
		lat := make([]time.Duration, 0, 1024)
		for b.Loop() {
			start := time.Now()
			create(b)
			lat = append(lat, time.Since(start))
		}
		reportPercentiles(b, lat)
	})
	b.Run("parallel32", func(b *testing.B) {
		b.SetParallelism(max(1, 32/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				create(b)
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
	})
}

// BenchmarkGet is GET /v1/calls/{id} through RPC: "redis" is a cache hit; "mysql" a miss, read
// from MySQL and written back to Redis (every measured read is of a call whose key was deleted
// beforehand, outside the timer).
//
//	go test ./bin-call-manager/cmd/call-manager -run '^$' -bench Get -count 6
func BenchmarkGet(b *testing.B) {
	h := newHarness(b, harnessOpts{quiet: true})
	ctx := context.Background()
	const pool = 200
	var ids []string
	for range pool {
		ids = append(ids, h.create(h.customerA, tel("+15550000002"))[0].ID)
	}
	rdb := testenv.Redis(b)
	dropKeys := func() {
		for _, id := range ids {
			rdb.Del(ctx, cache.Key(id))
		}
	}
	b.Cleanup(dropKeys)
	get := func(b *testing.B, id string) time.Duration {
		start := time.Now()
		if _, err := h.client.Get(ctx, h.customerA, id); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}

	b.Run("redis", func(b *testing.B) {
		get(b, ids[0]) // cached
		lat := make([]time.Duration, 0, 1024)
		for b.Loop() {
			lat = append(lat, get(b, ids[0]))
		}
		if h.counter("call_cache_operations_total", map[string]string{"op": "get", "result": "hit"}) < float64(len(lat)) {
			b.Fatal("reads were not served from Redis")
		}
		reportPercentiles(b, lat)
	})
	b.Run("mysql", func(b *testing.B) {
		misses := h.counter("call_cache_operations_total", map[string]string{"op": "get", "result": "miss"})
		lat := make([]time.Duration, 0, 1024)
		b.StopTimer()
		dropKeys()
		b.StartTimer()
		for i := 0; i < b.N; i++ {
			if i > 0 && i%pool == 0 {
				b.StopTimer()
				dropKeys()
				b.StartTimer()
			}
			lat = append(lat, get(b, ids[i%pool]))
		}
		b.StopTimer()
		if got := h.counter("call_cache_operations_total", map[string]string{"op": "get", "result": "miss"}) - misses; got < float64(b.N) {
			b.Fatalf("%v misses for %d reads: not all read from MySQL", got, b.N)
		}
		reportPercentiles(b, lat)
	})
}
