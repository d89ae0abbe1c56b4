// Command dialload is the rtc manager's load generator: it dials calls at a fixed rate through
// the real RPC path (rtcapi.Client on bin-manager.rtc.request) for a while, follows each call on
// rtc.events, and prints one JSON line: how many calls were dialled, how many were answered and
// ended normally, how many failed, and the achieved rate. bench/run.sh drives it against sipp.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/google/uuid"

	"voipbin/pkg/amqp"
	"voipbin/pkg/callapi"
	"voipbin/pkg/event"
	"voipbin/pkg/rpc"
	"voipbin/pkg/rtcapi"
)

type result struct {
	Rate        float64  `json:"rate_requested"`
	Achieved    float64  `json:"rate_achieved"`
	Dialled     int      `json:"dialled"`
	Completed   int      `json:"completed"` // answered, then ended by the remote BYE with 200
	Failed      int      `json:"failed"`
	DialP50ms   float64  `json:"dial_rpc_p50_ms"`
	DialP99ms   float64  `json:"dial_rpc_p99_ms"`
	SetupP50ms  float64  `json:"answer_p50_ms"` // dial request to rtc.answered
	FirstErrors []string `json:"first_errors,omitempty"`
	// Unfinished names a few calls that never ended in time, with the last event seen.
	Unfinished []string `json:"unfinished,omitempty"`
}

func main() {
	rabbit := flag.String("rabbit", "amqp://guest:guest@127.0.0.1:5672/", "RabbitMQ URL")
	target := flag.String("target", "", "SIP destination user@host:port (sipp answering)")
	rate := flag.Float64("rate", 50, "calls per second")
	dur := flag.Duration("duration", 10*time.Second, "how long to dial")
	wait := flag.Duration("wait", 30*time.Second, "how long to wait for the last calls to end")
	flag.Parse()
	if *target == "" {
		fmt.Fprintln(os.Stderr, "dialload: -target is required")
		os.Exit(2)
	}
	res, err := run(*rabbit, *target, *rate, *dur, *wait)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dialload:", err)
		os.Exit(1)
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	if res.Failed > 0 || res.Completed != res.Dialled {
		os.Exit(3)
	}
}

type call struct {
	last     string
	start    time.Time
	answered time.Duration
	ended    bool
	ok       bool
}

func run(url, target string, rate float64, dur, wait time.Duration) (result, error) {
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	ctx := context.Background()
	conn, err := amqp.Dial(ctx, url, log)
	if err != nil {
		return result{}, err
	}
	defer conn.Close()
	client := rpc.NewClient(conn, log, rpc.ClientOptions{BreakerFailures: 1 << 30})
	defer client.Close()
	rtc := rtcapi.NewClient(client)
	customer := "bench-" + uuid.NewString()[:8]

	var mu sync.Mutex
	calls := map[string]*call{}
	var errs []string
	failed := 0
	fail := func(msg string) {
		mu.Lock()
		defer mu.Unlock()
		failed++
		if len(errs) < 5 {
			errs = append(errs, msg)
		}
	}
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	ready := make(chan struct{})
	var once sync.Once
	go func() {
		_ = conn.Consume(cctx, amqp.ConsumeSpec{AutoAck: true, Prefetch: 1000, Setup: func(ch *amqp.Channel) (string, error) {
			if err := ch.ExchangeDeclare(event.ExchangeRTC, "topic", true, false, false, false, nil); err != nil {
				return "", err
			}
			q, err := ch.QueueDeclare("", false, true, true, false, nil)
			if err != nil {
				return "", err
			}
			if err := ch.QueueBind(q.Name, event.CustomerKey(customer), event.ExchangeRTC, false, nil); err != nil {
				return "", err
			}
			once.Do(func() { close(ready) }) // only once bound: an event published earlier would be lost
			return q.Name, nil
		}}, func(_ context.Context, d amqp.Delivery) {
			var ev event.Event
			if json.Unmarshal(d.Body, &ev) != nil {
				return
			}
			var data rtcapi.Event
			_ = json.Unmarshal(ev.Data, &data)
			mu.Lock()
			c := calls[ev.ResourceID]
			if c == nil {
				c = &call{}
				calls[ev.ResourceID] = c
			}
			c.last = ev.EventType
			switch ev.EventType {
			case rtcapi.EventAnswered:
				c.answered = data.At.Sub(c.start)
			case rtcapi.EventEnded:
				c.ended = true
				c.ok = data.SIPCode == 200 && data.By == callapi.HangupByRemote
				if !c.ok && len(errs) < 5 {
					errs = append(errs, fmt.Sprintf("call ended with %d by %s", data.SIPCode, data.By))
				}
			}
			mu.Unlock()
		})
	}()
	<-ready

	var dialLat []time.Duration
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / rate)
	began := time.Now()
	n := int(rate * dur.Seconds())
	for i := range n {
		time.Sleep(time.Until(began.Add(time.Duration(i) * interval)))
		id := uuid.NewString()
		mu.Lock()
		c := calls[id]
		if c == nil {
			c = &call{}
			calls[id] = c
		}
		c.start = time.Now()
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err := rtc.Dial(dctx, rtcapi.DialRequest{CallID: id, CustomerID: customer,
				Source: callapi.Address{Type: "tel", Target: "+15550000000"}, Destination: callapi.Address{Type: "sip", Target: target}, DialTimeout: 10})
			if err != nil {
				fail(err.Error())
				return
			}
			mu.Lock()
			dialLat = append(dialLat, time.Since(t0))
			mu.Unlock()
		}()
	}
	elapsed := time.Since(began)
	wg.Wait()
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		mu.Lock()
		done := 0
		for _, c := range calls {
			if c.ended {
				done++
			}
		}
		mu.Unlock()
		if done+failed >= n {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	res := result{Rate: rate, Achieved: float64(n) / elapsed.Seconds(), Dialled: n, Failed: failed, FirstErrors: errs}
	var setup []time.Duration
	for id, c := range calls {
		if !c.ended && !c.start.IsZero() && len(res.Unfinished) < 5 {
			res.Unfinished = append(res.Unfinished, id+" last="+c.last)
		}
		switch {
		case c.ended && c.ok:
			res.Completed++
			setup = append(setup, c.answered)
		case c.ended:
			res.Failed++
		}
	}
	if missing := n - res.Completed - res.Failed; missing > 0 {
		res.Failed += missing // never ended in time
	}
	res.DialP50ms, res.DialP99ms = pct(dialLat, 0.5), pct(dialLat, 0.99)
	res.SetupP50ms = pct(setup, 0.5)
	return res, nil
}

func pct(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return float64(d[int(p*float64(len(d)-1))].Microseconds()) / 1000
}
