package main

// Storage exhaustion: JetStream refuses writes once its store is full. Every
// refused write must answer temporarily_unavailable (never server_error,
// never a hang), be counted in tokend_store_errors_total, change no state,
// and leave the read side serving. These tests take about 2 s:
//
//	go test -race -count=1 -run TestStorage -v ./cmd/tokend

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
)

// outcome is the answer to one request that may fail: a decoded reply, or
// the transport error (a client-side timeout, no responders, a closed
// connection), with how long it took.
type outcome struct {
	reply
	err  error
	took time.Duration
}

// ok reports a success reply.
func (o outcome) ok() bool { return o.err == nil && o.errCode == "" }

func (o outcome) String() string {
	if o.err != nil {
		return fmt.Sprintf("transport error after %v: %v", o.took.Round(time.Millisecond), o.err)
	}
	return fmt.Sprintf("%s after %v", o.raw, o.took.Round(time.Millisecond))
}

// tryCall is call for requests that are expected to fail now and then: it
// never fails the test itself.
func tryCall(nc *nats.Conn, subject string, req any, timeout time.Duration) outcome {
	data, err := json.Marshal(req)
	if err != nil {
		panic(err)
	}
	start := time.Now()
	msg, err := nc.Request(subject, data, timeout)
	o := outcome{err: err, took: time.Since(start)}
	if err != nil {
		return o
	}
	o.raw, o.errCode = msg.Data, msg.Header.Get("Nats-Service-Error-Code")
	if o.errCode != "" {
		if err := json.Unmarshal(msg.Data, &o.reply.err); err != nil {
			o.err = fmt.Errorf("error body %q: %v", msg.Data, err)
		}
		return o
	}
	if err := json.Unmarshal(msg.Data, &o.token); err != nil {
		o.err = fmt.Errorf("reply %q: %v", msg.Data, err)
	}
	return o
}

func tryRefresh(nc *nats.Conn, token string, timeout time.Duration) outcome {
	return tryCall(nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: token, ClientID: "web-app"}, timeout)
}

// tokenGeneration reads the generation a refresh token carries:
// rt1.<family>.<generation>.<key id>.<secret>.<mac>.
func tokenGeneration(tb testing.TB, token string) uint64 {
	tb.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 6 || parts[0] != "rt1" {
		tb.Fatalf("not a refresh token: %d parts", len(parts))
	}
	gen, err := strconv.ParseUint(parts[2], 10, 64)
	if err != nil {
		tb.Fatal(err)
	}
	return gen
}

// streamState returns the TOKENS stream's message count and last sequence.
func streamState(tb testing.TB, js jetstream.JetStream) jetstream.StreamState {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		tb.Fatal(err)
	}
	return s.CachedInfo().State
}

// wantUnavailable checks that a refused write answered the contract's
// retryable error, promptly.
func wantUnavailable(tb testing.TB, what string, o outcome) {
	tb.Helper()
	if o.err != nil || o.reply.err.Error != domain.EUnavailable || o.errCode != "503" {
		tb.Fatalf("%s on a full store: %v; want temporarily_unavailable (503)", what, o)
	}
	if o.took > 2*time.Second {
		tb.Fatalf("%s on a full store took %v: a refused write must answer at once", what, o.took)
	}
}

// storageFamily is a family rotated until the store refused.
type storageFamily struct {
	id      string
	first   string // generation 1: an ancestor once rotated
	current string // the last acknowledged token
	gen     uint64
	seq     uint64 // of the last acknowledged reply
}

// lateSubject is the subject of the issue that must be refused on a full
// store: fillWithIssues issues for a subject 34 bytes shorter, more than
// the up to 30 bytes the event's three timestamps vary by (a timestamp's
// fraction is written without trailing zeros, or not at all), so the late
// issue's event is always larger than the one the store refused.
const lateSubject = "user-late-after-the-store-filled-up"

// fillWithIssues issues families until the store refuses one: a
// token.issued event is smaller than a token.rotated one, so a store too
// full for a rotation may still take an issue.
func fillWithIssues(t *testing.T, nc *nats.Conn) {
	t.Helper()
	for range 100 {
		o := tryCall(nc, "tokens.cmd.issue", wire.IssueRequest{Subject: "u", ClientID: "web-app"}, 10*time.Second)
		if !o.ok() {
			wantUnavailable(t, "issue while filling", o)
			return
		}
	}
	t.Fatal("100 issues stored after the store refused rotations")
}

// fillStore rotates every family from its own goroutine until each has had
// refusals answered in a row: the store is full.
func fillStore(t *testing.T, nc *nats.Conn, fams []*storageFamily) (rotations int) {
	t.Helper()
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for _, f := range fams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			refused := 0
			for n := 0; refused < 3; n++ {
				if n > 100000 {
					t.Errorf("family %s: the store never filled up", f.id)
					return
				}
				o := tryRefresh(nc, f.current, 10*time.Second)
				if !o.ok() {
					if o.err != nil || o.reply.err.Error != domain.EUnavailable || o.took > 2*time.Second {
						t.Errorf("family %s: a refresh on a filling store: %v; want temporarily_unavailable at once", f.id, o)
						return
					}
					refused++
					continue
				}
				if refused > 0 {
					// Space is not given back (DenyPurge, no expiry while
					// the test runs): once refused, always refused.
					t.Errorf("family %s: a rotation succeeded after %d refusals", f.id, refused)
				}
				if gen := tokenGeneration(t, o.token.RefreshToken); gen != f.gen+1 {
					t.Errorf("family %s: rotated generation %d to %d", f.id, f.gen, gen)
					return
				}
				f.current, f.gen, f.seq = o.token.RefreshToken, f.gen+1, o.token.Seq
				mu.Lock()
				rotations++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return rotations
}

// checkUnchanged checks that a family is exactly as the last acknowledged
// reply left it: the stream's last event is the acknowledged one, the read
// model holds the same generation, and the acknowledged token is current.
func checkUnchanged(t *testing.T, nc *nats.Conn, f *storageFamily) {
	t.Helper()
	evs := familyEvents(t, nc, f.id)
	last := evs[len(evs)-1]
	if last.Seq != f.seq || last.Generation != f.gen || last.Data.TokenHash != domain.HashToken(f.current) {
		t.Fatalf("family %s: stream ends with %s generation %d at seq %d; the last acknowledged reply was generation %d at seq %d",
			f.id, last.Type, last.Generation, last.Seq, f.gen, f.seq)
	}
	for _, e := range evs {
		if e.Type != string(domain.TokenIssued) && e.Type != string(domain.TokenRotated) {
			t.Fatalf("family %s: unexpected %s (%s) in the stream", f.id, e.Type, e.Reason)
		}
	}
	view := mustQuery[wire.FamilyView](t, nc, "tokens.query.family", wire.FamilyRequest{FamilyID: f.id, MinSeq: f.seq})
	if view.Generation != f.gen || view.Status != "active" {
		t.Fatalf("family %s: read model at generation %d %s, want %d active", f.id, view.Generation, view.Status, f.gen)
	}
	intro := mustQuery[wire.Introspection](t, nc, "tokens.query.introspect", wire.IntrospectRequest{RefreshToken: f.current})
	if !intro.Active {
		t.Fatalf("family %s: the last acknowledged token is not current any more", f.id)
	}
}

// TestStorageExhaustion fills a small JetStream store (the embedded server's
// --js-max-store): every append is refused whole.
func TestStorageExhaustion(t *testing.T) {
	cfg := testConfig(t)
	cfg.JSMaxStore = 256 << 10
	// The store, not a rate limit, is to refuse the rotations and issues.
	cfg.RefreshRate, cfg.IssueRate = 0, 0
	logs := &syncBuffer{}
	app := MustApp(t, cfg, logs)
	nc := eventstest.MustConnect(t, app.NATSURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}

	fams := make([]*storageFamily, 4)
	for i := range fams {
		r := mustIssue(t, nc, fmt.Sprintf("user-full-%d", i), "web-app")
		fams[i] = &storageFamily{id: r.FamilyID, first: r.RefreshToken, current: r.RefreshToken, gen: 1, seq: r.Seq}
	}
	start := time.Now()
	rotations := fillStore(t, nc, fams)
	fillWithIssues(t, nc)
	before := streamState(t, js)
	t.Logf("store full after %d rotations in %v: %d events, %d bytes in the stream", rotations, time.Since(start).Round(time.Millisecond), before.Msgs, before.Bytes)
	errorsBefore := parseMetrics(t, scrape(t, app)).value("tokend_store_errors_total")
	eventsBefore, lastBefore := streamEventCount(t, js), lastEventSeq(t, js)
	if errorsBefore < float64(3*len(fams)) {
		t.Fatalf("tokend_store_errors_total = %v after %d refused refreshes", errorsBefore, 3*len(fams))
	}

	// Every kind of write is refused the same way, and changes nothing.
	wantUnavailable(t, "issue", tryCall(nc, "tokens.cmd.issue", wire.IssueRequest{Subject: lateSubject, ClientID: "web-app"}, 10*time.Second))
	for _, f := range fams {
		wantUnavailable(t, "refresh", tryRefresh(nc, f.current, 10*time.Second))
		wantUnavailable(t, "refresh retried", tryRefresh(nc, f.current, 10*time.Second))
	}
	wantUnavailable(t, "replay", tryRefresh(nc, fams[0].first, 10*time.Second))
	wantUnavailable(t, "revoke", tryCall(nc, "tokens.cmd.revoke", wire.RevokeRequest{FamilyID: &fams[1].id}, 10*time.Second))
	if events, last := streamEventCount(t, js), lastEventSeq(t, js); events != eventsBefore || last != lastBefore {
		t.Fatalf("refused writes changed the stream: %d events up to seq %d, then %d up to %d", eventsBefore, lastBefore, events, last)
	}
	for _, f := range fams {
		checkUnchanged(t, nc, f)
	}
	m := parseMetrics(t, scrape(t, app))
	if got := m.value("tokend_store_errors_total"); got < errorsBefore+2*float64(len(fams))+3 {
		t.Fatalf("tokend_store_errors_total went from %v to %v over %d refused writes", errorsBefore, got, 2*len(fams)+3)
	}
	for _, cmd := range []string{"issue", "refresh", "revoke"} {
		if got := m.value("tokend_commands_total", "command", cmd, "outcome", domain.EServerError); got > 0 {
			t.Fatalf("%v %s commands answered server_error", got, cmd)
		}
	}

	// The read side keeps serving everything it has.
	lastEvent := lastEventSeq(t, js)
	page := mustQuery[wire.AuditPage](t, nc, "tokens.query.audit", wire.AuditRequest{MinSeq: lastEvent, Limit: intp(wire.MaxAuditLimit)})
	if page.AsOfSeq != lastEvent {
		t.Fatalf("query.audit as of seq %d, the newest event is at %d", page.AsOfSeq, lastEvent)
	}
	for _, f := range fams {
		if got, want := len(auditPages(t, nc, wire.AuditRequest{FamilyID: f.id}, wire.MaxAuditLimit)), int(f.gen); got != want {
			t.Fatalf("family %s: %d audit rows, %d events in the stream", f.id, got, want)
		}
	}
	for _, path := range []string{"/healthz", "/v1/audit?limit=10&family_id=" + fams[0].id, "/v1/families/" + fams[0].id, "/.well-known/jwks.json"} {
		if status, _, body := httpGet(t, app, path); status != http.StatusOK {
			t.Fatalf("GET %s on a full store: %d %s", path, status, body)
		}
	}
	for _, bad := range []string{"panic", "command failed"} {
		if strings.Contains(logs.String(), bad) {
			t.Fatalf("the logs hold %q:\n%s", bad, logs)
		}
	}

	// An operator restarts tokend on the full store: it starts, serves
	// queries and refuses writes the same way.
	app.Stop()
	nc.Close()
	app = MustApp(t, cfg, logs)
	nc = eventstest.MustConnect(t, app.NATSURL())
	for _, f := range fams {
		checkUnchanged(t, nc, f)
		wantUnavailable(t, "refresh after a restart", tryRefresh(nc, f.current, 10*time.Second))
	}
}

// TestStorageStreamFull: the TOKENS stream is full (its max bytes), so a
// refresh has its rotation refused. The presented token stays current, retrying it is refused the same way,
// and once there is room again it rotates exactly once. A replay that would
// need two events where only one fits stores neither.
func TestStorageStreamFull(t *testing.T) {
	cfg := testConfig(t)
	logs := &syncBuffer{}
	app := MustApp(t, cfg, logs)
	nc := eventstest.MustConnect(t, app.NATSURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	stream, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	setMaxBytes := func(n int64) {
		t.Helper()
		c := stream.CachedInfo().Config
		c.MaxBytes = n
		if _, err := js.UpdateStream(ctx, c); err != nil {
			t.Fatalf("max bytes %d: %v", n, err)
		}
	}

	r := mustIssue(t, nc, "user-stream-full", "web-app")
	f := &storageFamily{id: r.FamilyID, first: r.RefreshToken, current: r.RefreshToken, gen: 1, seq: r.Seq}
	for range 3 {
		r = mustRefresh(t, nc, f.current, "web-app")
		f.current, f.gen, f.seq = r.RefreshToken, f.gen+1, r.Seq
	}
	full := streamState(t, js)
	setMaxBytes(int64(full.Bytes))

	errorsBefore := parseMetrics(t, scrape(t, app)).value("tokend_store_errors_total")
	wantUnavailable(t, "refresh", tryRefresh(nc, f.current, 10*time.Second))
	wantUnavailable(t, "refresh retried", tryRefresh(nc, f.current, 10*time.Second))
	wantUnavailable(t, "issue", tryCall(nc, "tokens.cmd.issue", wire.IssueRequest{Subject: "user-late", ClientID: "web-app"}, 10*time.Second))
	if got := parseMetrics(t, scrape(t, app)).value("tokend_store_errors_total"); got < errorsBefore+3 {
		t.Fatalf("tokend_store_errors_total went from %v to %v over 3 refused appends", errorsBefore, got)
	}
	checkUnchanged(t, nc, f)

	// Room again: the presented token rotates once, to the next generation.
	setMaxBytes(-1)
	r = mustRefresh(t, nc, f.current, "web-app")
	if gen := tokenGeneration(t, r.RefreshToken); gen != f.gen+1 {
		t.Fatalf("after the store had room again: generation %d, want %d", gen, f.gen+1)
	}
	f.current, f.gen, f.seq = r.RefreshToken, f.gen+1, r.Seq
	checkUnchanged(t, nc, f)

	// Room for one event: a replay needs two (replay_detected and
	// family.revoked, one atomic batch) and must store both or neither.
	before := streamState(t, js)
	lastEvent := familyEvents(t, nc, f.id)
	oneEvent := int64(before.Bytes) / int64(before.Msgs) // a rough event size; the exact one matters little
	setMaxBytes(int64(before.Bytes) + oneEvent + oneEvent/2)
	o := tryRefresh(nc, f.first, 10*time.Second)
	evs := familyEvents(t, nc, f.id)
	added := evs[len(lastEvent):]
	switch {
	case o.ok():
		t.Fatalf("a replay was answered with a token: %v", o)
	case o.err == nil && o.reply.err.Error == domain.EUnavailable:
		if len(added) != 0 {
			t.Fatalf("a refused replay stored %d events: %s", len(added), added[0].Type)
		}
		checkUnchanged(t, nc, f)
		t.Logf("the replay was refused whole (%d bytes of room for a batch of two events)", oneEvent+oneEvent/2)
	case o.err == nil && o.reply.err.Error == domain.EInvalidGrant:
		if len(added) != 2 || added[0].Type != string(domain.ReplayDetected) || added[1].Type != string(domain.FamilyRevoked) {
			t.Fatalf("a replay stored %d events", len(added))
		}
		t.Logf("the replay's two events fitted into %d bytes", oneEvent+oneEvent/2)
	default:
		t.Fatalf("a replay on a nearly full stream: %v", o)
	}
	for _, bad := range []string{"panic", "command failed"} {
		if strings.Contains(logs.String(), bad) {
			t.Fatalf("the logs hold %q:\n%s", bad, logs)
		}
	}
}
