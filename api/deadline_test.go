package api

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
)

// gated is one endpoint served through async with a single slot, whose
// handler reports each request it starts and then waits to be released.
type gated struct {
	nc      *nats.Conn
	metrics *Metrics
	started chan string   // the body of every request the handler started
	release chan struct{} // one send lets one started request finish
}

func startGated(t *testing.T) *gated {
	t.Helper()
	nc := eventstest.MustConnect(t, eventstest.MustServer(t).ClientURL())
	g := &gated{nc: nc, metrics: NewMetrics(prometheus.NewRegistry()), started: make(chan string, 16), release: make(chan struct{})}
	s := &Service{Log: slog.New(slog.DiscardHandler), Metrics: g.metrics, nc: nc, workers: newWorkers(workerIdleTimeout)}
	svc, err := micro.AddService(nc, micro.Config{Name: "gated", Version: "0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Stop() })
	handle := func(_ context.Context, data []byte) (any, error) {
		g.started <- string(data)
		<-g.release
		return map[string]string{"done": string(data)}, nil
	}
	h := s.async("refresh", context.Background(), time.Minute, make(chan struct{}, 1), handle, g.metrics.command)
	if err := svc.AddEndpoint("refresh", h, micro.WithEndpointSubject("t.refresh")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return g
}

// send publishes a request named body, with the Tokend-Timeout-Ms header
// if timeout is not empty, and returns its answer's channel.
func (g *gated) send(t *testing.T, body, timeout string) <-chan *nats.Msg {
	t.Helper()
	answer := make(chan *nats.Msg, 1)
	inbox := nats.NewInbox()
	sub, err := g.nc.ChanSubscribe(inbox, answer)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	msg := nats.NewMsg("t.refresh")
	msg.Reply, msg.Data = inbox, []byte(body)
	if timeout != "" {
		msg.Header.Set(wire.HeaderTimeout, timeout)
	}
	if err := g.nc.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}
	if err := g.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return answer
}

// await returns the answer; the bound only turns a hang into a failure.
func await(t *testing.T, answer <-chan *nats.Msg) string {
	t.Helper()
	select {
	case m := <-answer:
		return string(m.Data)
	case <-time.After(30 * time.Second):
		t.Fatal("no answer")
		return ""
	}
}

func (g *gated) wantStarted(t *testing.T, body string) {
	t.Helper()
	select {
	case got := <-g.started:
		if got != body {
			t.Fatalf("started %q, want %q", got, body)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%q never started", body)
	}
}

func (g *gated) dropped(reason string) float64 {
	var m dto.Metric
	g.metrics.requestsDropped.WithLabelValues("nats", "refresh", reason).Write(&m)
	return m.GetCounter().GetValue()
}

// TestRequestsWaitBoundedForASlot: with the one slot taken, one request
// may wait for it, until its caller's timeout (less the time a request
// needs) runs out; one more is refused at once; and a request with no
// time left is not started even with the slot free. Each is answered
// temporarily_unavailable and counted; the handler never sees them.
func TestRequestsWaitBoundedForASlot(t *testing.T) {
	g := startGated(t)
	holder := g.send(t, "holder", "")
	g.wantStarted(t, "holder")

	waiter := g.send(t, "waiter", "300")
	refused := g.send(t, "refused", "60000")
	// Both are answered while the slot is still taken: nothing but the
	// waiting bounds can have answered them.
	if got := await(t, refused); !strings.Contains(got, `"busy, retry"`) {
		t.Fatalf("past the waiting room: %s", got)
	}
	if got := await(t, waiter); !strings.Contains(got, "timeout ran out") {
		t.Fatalf("waited past its caller's timeout: %s", got)
	}
	if g.dropped(droppedQueueFull) != 1 || g.dropped(droppedCallerDeadline) != 1 {
		t.Fatalf("dropped: queue_full %v, caller_deadline %v; want 1 and 1", g.dropped(droppedQueueFull), g.dropped(droppedCallerDeadline))
	}

	g.release <- struct{}{}
	if got := await(t, holder); !strings.Contains(got, `"done":"holder"`) {
		t.Fatalf("holder: %s", got)
	}
	if got := await(t, g.send(t, "late", "50")); !strings.Contains(got, "timeout ran out") {
		t.Fatalf("less than minTimeToRun left: %s", got)
	}
	if got := await(t, g.send(t, "malformed", "soon")); !strings.Contains(got, "invalid_request") {
		t.Fatalf("a malformed %s: %s", wire.HeaderTimeout, got)
	}
	timely := g.send(t, "timely", "5000")
	g.wantStarted(t, "timely")
	g.release <- struct{}{}
	if got := await(t, timely); !strings.Contains(got, `"done":"timely"`) {
		t.Fatalf("timely: %s", got)
	}
	if len(g.started) != 0 || g.dropped(droppedCallerDeadline) != 2 {
		t.Fatalf("started %d more, caller_deadline %v; want 0 and 2", len(g.started), g.dropped(droppedCallerDeadline))
	}
}

// TestRequestsWithoutATimeoutWaitAtMostMaxSlotWait: a caller that says
// nothing still gets its answer within maxSlotWait of a start, so a
// refresh it gave up on cannot run long after.
func TestRequestsWithoutATimeoutWaitAtMostMaxSlotWait(t *testing.T) {
	g := startGated(t)
	holder := g.send(t, "holder", "")
	g.wantStarted(t, "holder")
	if got := await(t, g.send(t, "waiter", "")); !strings.Contains(got, "waited too long") {
		t.Fatalf("waiter: %s", got)
	}
	if g.dropped(droppedSlotWait) != 1 {
		t.Fatalf("slot_wait %v, want 1", g.dropped(droppedSlotWait))
	}
	g.release <- struct{}{}
	await(t, holder)
}

// TestStartByTheCallersDeadline: Tokend-Deadline, the caller's clock's
// deadline, bounds when a request may start even when the handler has just
// got it (it waited in a frozen tokend's socket), with MaxDeadlineSkew for
// the clocks; the sooner of it and Tokend-Timeout-Ms wins; a malformed one
// is invalid_request.
func TestStartByTheCallersDeadline(t *testing.T) {
	arrived := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	headers := func(kv ...string) micro.Headers {
		h := nats.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return micro.Headers(h)
	}
	ms := func(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }
	for _, tc := range []struct {
		name       string
		h          micro.Headers
		wantLatest time.Time
		wantReason string
		wantErr    bool
	}{
		{"none", headers(), arrived.Add(maxSlotWait), droppedSlotWait, false},
		{"given up 12 s ago", headers(wire.HeaderDeadline, ms(arrived.Add(-12*time.Second))),
			arrived.Add(-12*time.Second + MaxDeadlineSkew - minTimeToRun), droppedCallerDeadline, false},
		{"half a second ago: the clocks may differ", headers(wire.HeaderDeadline, ms(arrived.Add(-500*time.Millisecond))),
			arrived.Add(-500*time.Millisecond + MaxDeadlineSkew - minTimeToRun), droppedCallerDeadline, false},
		{"far ahead: the slot wait bounds it", headers(wire.HeaderDeadline, ms(arrived.Add(time.Minute))), arrived.Add(maxSlotWait), droppedSlotWait, false},
		{"the sooner of the two", headers(wire.HeaderDeadline, ms(arrived.Add(-2*time.Second)), wire.HeaderTimeout, "500"),
			arrived.Add(-2*time.Second + MaxDeadlineSkew - minTimeToRun), droppedCallerDeadline, false},
		{"timeout the sooner", headers(wire.HeaderDeadline, ms(arrived.Add(5*time.Second)), wire.HeaderTimeout, "300"),
			arrived.Add(300*time.Millisecond - minTimeToRun), droppedCallerDeadline, false},
		{"not a number", headers(wire.HeaderDeadline, "soon"), time.Time{}, "", true},
		{"negative", headers(wire.HeaderDeadline, "-5"), time.Time{}, "", true},
		{"past year 9999", headers(wire.HeaderDeadline, "9223372036854775807"), time.Time{}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			latest, reason, err := startBy(arrived, tc.h)
			if (err != nil) != tc.wantErr || !latest.Equal(tc.wantLatest) || reason != tc.wantReason {
				t.Fatalf("startBy = %v, %q, %v; want %v, %q, error %v", latest, reason, err, tc.wantLatest, tc.wantReason, tc.wantErr)
			}
		})
	}
}

// TestStaleRequestIsNotRun: a request whose caller's deadline passed while
// it was on its way is answered temporarily_unavailable and never run.
func TestStaleRequestIsNotRun(t *testing.T) {
	g := startGated(t)
	msg := nats.NewMsg("t.refresh")
	msg.Data = []byte("stale")
	msg.Header.Set(wire.HeaderDeadline, strconv.FormatInt(time.Now().Add(-10*time.Second).UnixMilli(), 10))
	answer, err := g.nc.RequestMsg(msg, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(answer.Data), "temporarily_unavailable") {
		t.Fatalf("answer %q", answer.Data)
	}
	select {
	case body := <-g.started:
		t.Fatalf("the handler ran %q", body)
	default:
	}
}
