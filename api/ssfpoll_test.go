package api

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/signals"
)

// stubPoller stands for the delivery engine: it records each poll with
// its context's deadline, and answers answer and err at once or, with
// wait, with nothing once its context is done.
type stubPoller struct {
	mu     sync.Mutex
	got    []polled
	answer signals.PollResponse
	err    error
	wait   bool
}

type polled struct {
	stream   signals.Stream
	req      signals.PollRequest
	deadline time.Time
}

func (p *stubPoller) Poll(ctx context.Context, s signals.Stream, req signals.PollRequest) (signals.PollResponse, error) {
	deadline, _ := ctx.Deadline()
	p.mu.Lock()
	p.got = append(p.got, polled{s, req, deadline})
	answer, err, wait := p.answer, p.err, p.wait
	p.mu.Unlock()
	if wait {
		<-ctx.Done()
		return signals.PollResponse{}, nil
	}
	return answer, err
}

func (p *stubPoller) set(answer signals.PollResponse, err error, wait bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.answer, p.err, p.wait = answer, err, wait
}

func (p *stubPoller) polls() []polled {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]polled(nil), p.got...)
}

// TestSSFPoll: a poll's maxEvents, returnImmediately, ack and setErrs
// (RFC 8936 section 2.2) reach the delivery as sent, with the receiver's
// stream; its answer is section 2.3's, sets an object even when empty.
func TestSSFPoll(t *testing.T) {
	e := mustSSFEnv(t)
	tok := e.token(t, "rp-1", domain.ScopeSSFManage)
	id := e.create(t, "rp-1", `{"events_requested": ["`+signals.TypeSessionRevoked+`"]}`)
	path := PathSSFPoll + id
	e.poller.set(signals.PollResponse{Sets: map[string]string{"j4": "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"}, MoreAvailable: true}, nil, false)

	r := e.do(t, http.MethodPost, path, tok, `{"maxEvents": 5, "returnImmediately": true, "ack": ["j1", "j2"],
		"setErrs": {"j3": {"err": "invalid_key", "description": "unknown kid"}}, "aLaterMember": 1}`)
	if r.code != http.StatusOK || r.body != `{"sets":{"j4":"eyJhbGciOiJSUzI1NiJ9.e30.c2ln"},"moreAvailable":true}`+"\n" ||
		r.header.Get("Content-Type") != "application/json" || r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("poll: %d %v %s", r.code, r.header, r.body)
	}
	got := e.poller.polls()
	want := signals.PollRequest{MaxEvents: ptr(5), ReturnImmediately: true, Ack: []string{"j1", "j2"},
		SetErrs: map[string]signals.SetErr{"j3": {Err: "invalid_key", Description: "unknown kid"}}}
	if len(got) != 1 || !reflect.DeepEqual(got[0].req, want) {
		t.Fatalf("the delivery got %+v", got)
	}
	if st := got[0].stream; st.ID != id || st.Receiver != "rp-1" || st.Delivery.Method != signals.DeliveryPoll ||
		st.EventsDelivered[0] != signals.TypeSessionRevoked {
		t.Fatalf("polled stream %+v", st)
	}

	// Nothing to hand out: sets is an empty object. An acknowledge-only
	// poll (maxEvents 0) and an empty body (a long poll) reach the
	// delivery likewise.
	e.poller.set(signals.PollResponse{}, nil, false)
	for _, tc := range []struct {
		body string
		want signals.PollRequest
	}{
		{`{"maxEvents": 0, "ack": ["j4"], "returnImmediately": true}`, signals.PollRequest{MaxEvents: ptr(0), Ack: []string{"j4"}, ReturnImmediately: true}},
		{``, signals.PollRequest{}},
	} {
		r := e.do(t, http.MethodPost, path, tok, tc.body)
		if r.code != http.StatusOK || r.body != `{"sets":{},"moreAvailable":false}`+"\n" {
			t.Fatalf("%q: %d %s", tc.body, r.code, r.body)
		}
		if got := e.poller.polls(); !reflect.DeepEqual(got[len(got)-1].req, tc.want) {
			t.Fatalf("%q: the delivery got %+v", tc.body, got[len(got)-1].req)
		}
	}
	if e.requests(t, "ssf_poll", "ok") != 3 {
		t.Fatal("polls not counted under ssf_poll")
	}

	// The delivery's errors.
	e.poller.set(signals.PollResponse{}, &domain.Error{Code: domain.EUnavailable, Message: "consumer unreachable, retry", RetryAfterMs: 2000}, false)
	r = e.do(t, http.MethodPost, path, tok, `{"returnImmediately": true}`)
	wantSSFError(t, r, http.StatusServiceUnavailable, "temporarily_unavailable")
	if r.header.Get("Retry-After") != "2" {
		t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
	}
	e.poller.set(signals.PollResponse{}, errors.New("consumer deleted"), false)
	wantSSFError(t, e.do(t, http.MethodPost, path, tok, `{"returnImmediately": true}`), http.StatusInternalServerError, "server_error")
	if !strings.Contains(e.logs.String(), `level=ERROR msg="oauth request failed" endpoint=ssf_poll err="consumer deleted"`) {
		t.Fatalf("server error not logged:\n%s", e.logs)
	}

	// The delivery engine answers the polls; an instance without it
	// cannot.
	engine := signals.NewEngine(signals.EngineOptions{})
	if with := NewOAuth(&Service{Delivery: engine}, e.o.clients, receiverIssuer, nil, slog.New(slog.DiscardHandler)); with.polls != Poller(engine) {
		t.Fatalf("polls go to %v, not Service.Delivery", with.polls)
	}
	without := NewOAuth(&Service{Access: e.o.svc.Access, Now: e.clock.now, Streams: e.store, Outbox: e.outbox}, e.o.clients, receiverIssuer, nil,
		slog.New(slog.DiscardHandler))
	if without.polls != nil {
		t.Fatal("a poller without Service.Delivery")
	}
	e.handler = without.Handler()
	wantSSFError(t, e.do(t, http.MethodPost, path, tok, `{}`), http.StatusServiceUnavailable, "temporarily_unavailable")
}

// TestSSFPollWaitBounds: a long poll may wait up to MaxLongPoll for SETs, a
// short poll (returnImmediately) no longer than any request.
func TestSSFPollWaitBounds(t *testing.T) {
	e := mustSSFEnv(t)
	tok := e.token(t, "rp-1")
	id := e.create(t, "rp-1", "")
	for _, tc := range []struct {
		body string
		wait time.Duration
	}{
		{`{}`, MaxLongPoll},
		{`{"returnImmediately": false}`, MaxLongPoll},
		{`{"returnImmediately": true}`, requestTimeout},
	} {
		before := time.Now()
		if r := e.do(t, http.MethodPost, PathSSFPoll+id, tok, tc.body); r.code != http.StatusOK {
			t.Fatalf("%s: %d %s", tc.body, r.code, r.body)
		}
		after := time.Now()
		got := e.poller.polls()
		if d := got[len(got)-1].deadline; d.Before(before.Add(tc.wait)) || d.After(after.Add(tc.wait)) {
			t.Fatalf("%s: the delivery may wait until %v, want %v after the request", tc.body, d, tc.wait)
		}
	}
}

// TestSSFLongPollOutlastsTheWriteTimeout: a long poll that ends with no
// SETs is answered, even past the listener's write timeout.
func TestSSFLongPollOutlastsTheWriteTimeout(t *testing.T) {
	e := mustSSFEnv(t)
	id := e.create(t, "rp-1", "")
	e.poller.set(signals.PollResponse{}, nil, true)
	e.o.longPoll = 300 * time.Millisecond
	srv := httptest.NewUnstartedServer(e.handler)
	srv.Config.WriteTimeout = 50 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	req, _ := http.NewRequest(http.MethodPost, srv.URL+PathSSFPoll+id, strings.NewReader(`{}`))
	req.Header.Set("Authorization", "Bearer "+e.token(t, "rp-1"))
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("the answer to a long poll was lost: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != `{"sets":{},"moreAvailable":false}`+"\n" {
		t.Fatalf("%d %q %v", resp.StatusCode, body, err)
	}
}

// TestSSFLongPollEndsAtShutdown: stopping the service ends the long polls
// in flight, answered with what the delivery has, so receivers poll
// another instance.
func TestSSFLongPollEndsAtShutdown(t *testing.T) {
	e := mustSSFEnv(t)
	id := e.create(t, "rp-1", "")
	e.poller.set(signals.PollResponse{}, nil, true)
	e.o.svc.queriesCtx, e.o.svc.stopQueries = context.WithCancel(context.Background())
	tok := e.token(t, "rp-1")
	done := make(chan ssfResponse, 1)
	go func() { done <- e.do(t, http.MethodPost, PathSSFPoll+id, tok, `{}`) }()
	eventstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if len(e.poller.polls()) == 0 {
			return errors.New("the poll has not reached the delivery")
		}
		return nil
	})
	e.o.svc.Stop()
	select {
	case r := <-done:
		if r.code != http.StatusOK || r.body != `{"sets":{},"moreAvailable":false}`+"\n" {
			t.Fatalf("%d %s", r.code, r.body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the long poll outlived the service")
	}
}
