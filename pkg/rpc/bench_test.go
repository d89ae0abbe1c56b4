package rpc_test

import (
	"context"
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

// BenchmarkRPC measures our round trip (envelope, router, deadline, breaker) beside a raw amqp091
// direct reply-to ping-pong with the same body size, sequential and with 32 callers.
//
//	go test ./rpc -run '^$' -bench RoundTrip -benchtime 3s -count 6 | benchstat -
func BenchmarkRoundTrip(b *testing.B) {
	conn := testenv.Rabbit(b)
	queue := testenv.Name("bench")
	startServer(b, conn, queue, map[string]rpc.HandlerFunc{"POST /v1/echo": echo})
	client := rpc.NewClient(conn, testenv.Logger(b), rpc.ClientOptions{})
	defer client.Close()
	call := func(b *testing.B) {
		var got echoReply
		if err := rpc.Do(context.Background(), client, queue, "POST", "/v1/echo", echoBody{N: 1, Payload: payload1K}, &got); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("voipbin/sequential", func(b *testing.B) {
		for b.Loop() {
			call(b)
		}
	})
	b.Run("voipbin/parallel32", func(b *testing.B) {
		b.SetParallelism(32 / max(1, testingProcs()))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				call(b)
			}
		})
	})

	raw := newRawPingPong(b)
	b.Run("raw-amqp091/sequential", func(b *testing.B) {
		for b.Loop() {
			raw.call(b)
		}
	})
	b.Run("raw-amqp091/parallel32", func(b *testing.B) {
		b.SetParallelism(32 / max(1, testingProcs()))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				raw.call(b)
			}
		})
	})
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
