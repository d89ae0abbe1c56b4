package rpc_test

import (
	"context"
	"encoding/json"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"voipbin/pkg/rpc"
	"voipbin/pkg/testenv"
)

// payload1K makes the request body about 1 KB.
var payload1K = strings.Repeat("x", 1000)

// BenchmarkRoundTrip measures our round trip (envelope, router, deadline, breaker, typed
// errors) beside a raw amqp091 direct reply-to ping-pong with the same ~1 KB body, sequential and
// with 32 callers, in the same run. "voipbin" echoes the body as the raw ping-pong does, so the two
// differ only by what pkg/rpc adds; "voipbin-typed" adds what a typed handler adds on top (rpc.Do
// marshalling a struct, Request.Decode, rpc.JSON, and decoding the reply into a struct).
//
//	go test ./rpc -run '^$' -bench RoundTrip -benchtime 2s -count 6 | benchstat -
func BenchmarkRoundTrip(b *testing.B) {
	conn := testenv.Rabbit(b)
	queue := testenv.Name("bench")
	startServer(b, conn, queue, map[string]rpc.HandlerFunc{
		"POST /v1/echo": echo,
		"POST /v1/raw": func(_ context.Context, r *rpc.Request) (*rpc.Response, error) {
			return &rpc.Response{StatusCode: 200, Body: r.Body}, nil
		},
	})
	client := rpc.NewClient(conn, testenv.Logger(b), rpc.ClientOptions{})
	defer client.Close()
	body := json.RawMessage(`{"n":1,"payload":"` + payload1K + `"}`)
	plain := func(b *testing.B) {
		resp, err := client.Call(context.Background(), queue, rpc.Request{Method: "POST", Route: "/v1/raw", Body: body})
		if err != nil || len(resp.Body) != len(body) {
			b.Fatal(err)
		}
	}
	typed := func(b *testing.B) {
		var got echoReply
		if err := rpc.Do(context.Background(), client, queue, "POST", "/v1/echo", echoBody{N: 1, Payload: payload1K}, &got); err != nil {
			b.Fatal(err)
		}
	}
	raw := newRawPingPong(b)
	for _, c := range []struct {
		name string
		call func(*testing.B)
	}{{"voipbin", plain}, {"voipbin-typed", typed}, {"raw-amqp091", raw.call}} {
		b.Run(c.name+"/sequential", func(b *testing.B) {
			for b.Loop() {
				c.call(b)
			}
		})
		b.Run(c.name+"/parallel32", func(b *testing.B) {
			b.SetParallelism(32 / max(1, testingProcs()))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					c.call(b)
				}
			})
		})
	}
}

// rawPingPong is the baseline: one amqp091 connection, a server echoing on a queue and a client
// on direct reply-to, with the least code that is still correct under concurrency.
type rawPingPong struct {
	queue   string
	ch      *amqp091.Channel
	mu      sync.Mutex
	next    int
	pending map[string]chan []byte
	body    []byte
}

func newRawPingPong(b *testing.B) *rawPingPong {
	conn, err := amqp091.Dial(testenv.RabbitURL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	r := &rawPingPong{queue: testenv.Name("raw"), pending: map[string]chan []byte{},
		body: []byte(`{"n":1,"payload":"` + payload1K + `"}`)}
	srv, _ := conn.Channel()
	if _, err := srv.QueueDeclare(r.queue, false, true, false, false, nil); err != nil {
		b.Fatal(err)
	}
	_ = srv.Qos(64, 0, false)
	reqs, err := srv.Consume(r.queue, "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for d := range reqs {
			_ = srv.Publish("", d.ReplyTo, false, false, amqp091.Publishing{CorrelationId: d.CorrelationId, Body: d.Body})
			_ = d.Ack(false)
		}
	}()
	r.ch, _ = conn.Channel()
	replies, err := r.ch.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for d := range replies {
			r.mu.Lock()
			c := r.pending[d.CorrelationId]
			delete(r.pending, d.CorrelationId)
			r.mu.Unlock()
			c <- d.Body
		}
	}()
	return r
}

func (r *rawPingPong) call(b *testing.B) {
	c := make(chan []byte, 1)
	r.mu.Lock()
	r.next++
	id := strconv.Itoa(r.next)
	r.pending[id] = c
	r.mu.Unlock()
	if err := r.ch.Publish("", r.queue, false, false, amqp091.Publishing{CorrelationId: id,
		ReplyTo: "amq.rabbitmq.reply-to", Body: r.body}); err != nil {
		b.Fatal(err)
	}
	<-c
}

func testingProcs() int { return runtime.GOMAXPROCS(0) }
