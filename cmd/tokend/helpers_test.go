package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
)

// syncBuffer collects log output from concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testConfig(tb testing.TB) Config {
	cfg, err := parseConfig([]string{"--data-dir", tb.TempDir(), "--http", "127.0.0.1:0", "--nats-listen", "127.0.0.1:-1"},
		func(string) (string, bool) { return "", false }, io.Discard)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.AuditHTTP = testAuditHTTP(tb)
	return cfg
}

// MustApp starts a tokend instance; with natsURL set it joins that server.
func MustApp(tb testing.TB, cfg Config, logs io.Writer) *App {
	tb.Helper()
	if logs == nil {
		logs = io.Discard
	}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	app, err := Start(context.Background(), cfg, log)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(app.Stop)
	return app
}

// mustInstances starts a JetStream server and n tokend instances that join
// it, each on its own data directory; configure, if not nil, adjusts every
// instance's Config before it starts. It returns the server's URL.
func mustInstances(tb testing.TB, n int, configure func(*Config)) (natsURL string, apps []*App) {
	tb.Helper()
	natsURL = eventstest.MustJetStream(tb).ClientURL()
	apps = make([]*App, n)
	for i := range apps {
		cfg := testConfig(tb)
		cfg.NATSURL = natsURL
		if configure != nil {
			configure(&cfg)
		}
		apps[i] = MustApp(tb, cfg, nil)
	}
	return natsURL, apps
}

// reply is a decoded answer with its micro error headers.
type reply struct {
	raw     []byte
	errCode string // Nats-Service-Error-Code: the status
	errText string // Nats-Service-Error: the contract error code
	token   wire.TokenReply
	err     wire.ErrorReply
}

func call(tb testing.TB, nc *nats.Conn, subject string, req any) reply {
	tb.Helper()
	data, ok := req.([]byte)
	if !ok {
		var err error
		if data, err = json.Marshal(req); err != nil {
			tb.Fatal(err)
		}
	}
	msg, err := nc.Request(subject, data, 10*time.Second)
	if err != nil {
		tb.Fatalf("request %s: %v", subject, err)
	}
	r := reply{raw: msg.Data, errCode: msg.Header.Get("Nats-Service-Error-Code"), errText: msg.Header.Get("Nats-Service-Error")}
	if r.errCode != "" {
		if err := json.Unmarshal(msg.Data, &r.err); err != nil {
			tb.Fatalf("error body %q: %v", msg.Data, err)
		}
		return r
	}
	json.Unmarshal(msg.Data, &r.token)
	return r
}

func mustIssue(tb testing.TB, nc *nats.Conn, subject, client string) wire.TokenReply {
	tb.Helper()
	r := call(tb, nc, "tokens.cmd.issue", wire.IssueRequest{Subject: subject, ClientID: client,
		Scope: "openid api:read api:write", Audience: []string{"https://api.example.com", "https://billing.example.com"},
		Context: map[string]string{"ip": "203.0.113.7"}})
	if r.errCode != "" {
		tb.Fatalf("issue: %s", r.raw)
	}
	return r.token
}

func refresh(tb testing.TB, nc *nats.Conn, token, client string) reply {
	tb.Helper()
	return call(tb, nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: token, ClientID: client})
}

func mustRefresh(tb testing.TB, nc *nats.Conn, token, client string) wire.TokenReply {
	tb.Helper()
	r := refresh(tb, nc, token, client)
	if r.errCode != "" {
		tb.Fatalf("refresh: %s", r.raw)
	}
	return r.token
}

func wantError(tb testing.TB, r reply, code string) {
	tb.Helper()
	if r.err.Error != code || r.errCode == "" || r.errText != code {
		tb.Fatalf("want error %s in the body and the Nats-Service-Error header, with a Nats-Service-Error-Code header; got %q (headers %q, %q)",
			code, r.raw, r.errCode, r.errText)
	}
}

// familyEvents reads a family's subject straight from the stream.
func familyEvents(tb testing.TB, nc *nats.Conn, familyID string) []storedEvent {
	tb.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	subject := "tokens.evt." + familyID
	stream, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		tb.Fatal(err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		tb.Fatal(err)
	}
	want := int(info.State.Subjects[subject])
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		tb.Fatal(err)
	}
	var out []storedEvent
	// Events may expire while they are read (per-message TTLs), so the
	// read ends at the last one the consumer delivers, however many the
	// count said.
	for pending := want; pending > 0; {
		msgs, err := cons.Fetch(max(want-len(out), 1), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			tb.Fatal(err)
		}
		got := 0
		for m := range msgs.Messages() {
			env, err := events.Decode(m.Data(), familyID)
			if err != nil {
				tb.Fatal(err)
			}
			md, _ := m.Metadata()
			out = append(out, storedEvent{Envelope: env, Seq: md.Sequence.Stream, MsgID: m.Headers().Get("Nats-Msg-Id")})
			got, pending = got+1, int(md.NumPending)
		}
		if msgs.Error() != nil {
			tb.Fatalf("reading %s: %v", subject, msgs.Error())
		}
		if got == 0 {
			break // the rest expired before it could be read
		}
	}
	return out
}

type storedEvent struct {
	events.Envelope
	Seq   uint64
	MsgID string
}

func countTypes(evs []storedEvent) map[string]int {
	m := map[string]int{}
	for _, e := range evs {
		m[e.Type]++
	}
	return m
}

// tokensStream returns the TOKENS stream.
func tokensStream(tb testing.TB, ctx context.Context, js jetstream.JetStream) jetstream.Stream {
	tb.Helper()
	s, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// countSubjects returns how many messages of the TOKENS stream match filter.
func countSubjects(tb testing.TB, js jetstream.JetStream, filter string) uint64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := tokensStream(tb, ctx, js).Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		tb.Fatal(err)
	}
	var n uint64
	for _, count := range info.State.Subjects {
		n += count
	}
	return n
}

// streamEventCount returns how many events the stream holds.
func streamEventCount(tb testing.TB, js jetstream.JetStream) uint64 {
	tb.Helper()
	return countSubjects(tb, js, "tokens.evt.*")
}

// lastEventSeq returns the stream sequence of the newest event: where a
// caught-up read model stands.
func lastEventSeq(tb testing.TB, js jetstream.JetStream) uint64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	last, err := events.LastEventSeq(ctx, tokensStream(tb, ctx, js), events.Subjects{Prefix: "tokens"})
	if err != nil {
		tb.Fatal(err)
	}
	return last
}
