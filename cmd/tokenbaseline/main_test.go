package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
)

type reply struct {
	RefreshToken string `json:"refresh_token"`
	FamilyID     string `json:"family_id"`
	Seq          uint64 `json:"seq"`
}

func mustStart(t *testing.T, cfg config) (*pipeline, *nats.Conn) {
	t.Helper()
	cfg.dataDir, cfg.natsListen, cfg.httpAddr = t.TempDir(), "127.0.0.1:-1", "127.0.0.1:0"
	cfg.jsMaxMemory, cfg.jsMaxStore = 64<<20, 1<<30
	if cfg.eventBytes == 0 {
		cfg.eventBytes = 400
	}
	p, err := start(t.Context(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	nc, err := nats.Connect(p.ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return p, nc
}

func ask(t *testing.T, nc *nats.Conn, subject, body string) *nats.Msg {
	t.Helper()
	msg, err := nc.Request(subject, []byte(body), 10*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	return msg
}

func mustIssue(t *testing.T, nc *nats.Conn) reply {
	t.Helper()
	var r reply
	if err := json.Unmarshal(ask(t, nc, "baseline.cmd.issue", `{"subject":"u","client_id":"c"}`).Data, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// refresh returns the reply, or the error code of a failure.
func refresh(t *testing.T, nc *nats.Conn, family string) (reply, string) {
	t.Helper()
	msg := ask(t, nc, "baseline.cmd.refresh", `{"family_id":"`+family+`","refresh_token":"x","client_id":"c"}`)
	var r reply
	if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
		var body struct {
			Error string `json:"error"`
		}
		json.Unmarshal(msg.Data, &body)
		return r, code + " " + body.Error
	}
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		t.Fatalf("reply %q: %v", msg.Data, err)
	}
	return r, ""
}

// TestIssueAndRefresh: each request is one append on the family's
// subject, fenced on the sequence of the family's previous event, of an
// event of exactly --event-bytes, answered with its sequence.
func TestIssueAndRefresh(t *testing.T) {
	p, nc := mustStart(t, config{eventBytes: 300})
	issued := mustIssue(t, nc)
	if issued.FamilyID == "" || issued.Seq != 1 || issued.RefreshToken != issued.FamilyID+".1" {
		t.Fatalf("issue reply %+v", issued)
	}
	other := mustIssue(t, nc) // stream seq 2: the fence is per subject
	refreshed, failed := refresh(t, nc, issued.FamilyID)
	if failed != "" || refreshed.Seq != 3 || refreshed.FamilyID != issued.FamilyID || refreshed.RefreshToken != issued.FamilyID+".3" {
		t.Fatalf("refresh reply %+v %s", refreshed, failed)
	}

	msg, err := p.stream.GetLastMsgForSubject(t.Context(), "baseline.evt."+issued.FamilyID)
	if err != nil {
		t.Fatal(err)
	}
	if msg.Sequence != 3 || msg.Header.Get(jetstream.ExpectedLastSubjSeqHeader) != "1" {
		t.Fatalf("stored seq %d, headers %v; want 3, fenced on 1", msg.Sequence, msg.Header)
	}
	if len(msg.Data) != 300 {
		t.Errorf("event is %d bytes, want --event-bytes 300", len(msg.Data))
	}
	var ev struct {
		ID       string `json:"id"`
		Type     string `json:"type"`
		FamilyID string `json:"family_id"`
	}
	if err := json.Unmarshal(msg.Data, &ev); err != nil || ev.ID == "" || ev.Type != "token.rotated" || ev.FamilyID != issued.FamilyID {
		t.Errorf("event %s: %+v, %v", msg.Data, ev, err)
	}
	if msg, _ := p.stream.GetLastMsgForSubject(t.Context(), "baseline.evt."+other.FamilyID); msg == nil || msg.Header.Get(jetstream.ExpectedLastSubjSeqHeader) != "0" {
		t.Errorf("an issue's append is fenced on an empty subject: %+v", msg)
	}
}

// TestConcurrentRefreshesOfOneFamily: requests for one family wait for the
// append in flight, whose sequence is their fence, so none conflicts.
func TestConcurrentRefreshesOfOneFamily(t *testing.T) {
	_, nc := mustStart(t, config{})
	family := mustIssue(t, nc).FamilyID
	const n = 20
	seqs := make([]uint64, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			r, failed := refresh(t, nc, family)
			if failed != "" {
				t.Errorf("refresh %d: %s", i, failed)
			}
			seqs[i] = r.Seq
		})
	}
	wg.Wait()
	slices.Sort(seqs)
	for i, s := range seqs {
		if s != uint64(i+2) {
			t.Fatalf("sequences %v, want 2 to %d", seqs, n+1)
		}
	}
}

// TestFenceConflictReloads: an event appended behind the pipeline's back
// (another instance) fails the next append's fence, which answers
// temporarily_unavailable; the request after it reads the family's last
// sequence and succeeds. A family the process never saw is read the same
// way.
func TestFenceConflictReloads(t *testing.T) {
	p, nc := mustStart(t, config{})
	family := mustIssue(t, nc).FamilyID
	js, _ := jetstream.New(nc)
	if _, err := js.Publish(t.Context(), "baseline.evt."+family, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if _, failed := refresh(t, nc, family); failed != "503 temporarily_unavailable" {
		t.Fatalf("refresh after a foreign append: %q, want a 503 temporarily_unavailable", failed)
	}
	if r, failed := refresh(t, nc, family); failed != "" || r.Seq != 3 {
		t.Fatalf("refresh after the conflict: %+v %s; want seq 3", r, failed)
	}

	if _, err := js.Publish(t.Context(), "baseline.evt.unseen", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if r, failed := refresh(t, nc, "unseen"); failed != "" || r.Seq != 5 {
		t.Fatalf("refresh of a family stored before: %+v %s; want seq 5", r, failed)
	}
	if r, failed := refresh(t, nc, "never-stored"); failed != "" || r.Seq != 6 {
		t.Fatalf("refresh of a family never stored: %+v %s; want seq 6", r, failed)
	}
	if msg, _ := p.stream.GetLastMsgForSubject(t.Context(), "baseline.evt.unseen"); msg == nil || msg.Header.Get(jetstream.ExpectedLastSubjSeqHeader) != "4" {
		t.Errorf("append to a loaded family: %+v, want fenced on 4", msg)
	}
}

// TestLostAcknowledgement: an append JetStream never acknowledges is
// answered temporarily_unavailable once overdue and frees its family; the
// next request reads where the family stands.
func TestLostAcknowledgement(t *testing.T) {
	p, nc := mustStart(t, config{ackTimeout: time.Second})
	family := mustIssue(t, nc).FamilyID
	js, _ := jetstream.New(nc)
	setNoAck := func(on bool) {
		cfg := streamConfig()
		cfg.NoAck = on
		if _, err := js.UpdateStream(t.Context(), cfg); err != nil {
			t.Fatal(err)
		}
	}
	setNoAck(true)
	if _, failed := refresh(t, nc, family); failed != "503 temporarily_unavailable" {
		t.Fatalf("refresh without an acknowledgement: %q, want a 503 temporarily_unavailable", failed)
	}
	setNoAck(false)
	// The unacknowledged append was stored: seq 2.
	if r, failed := refresh(t, nc, family); failed != "" || r.Seq != 3 {
		t.Fatalf("refresh after the lost acknowledgement: %+v %s; want seq 3", r, failed)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.pending) != 0 {
		t.Errorf("%d appends still pending", len(p.pending))
	}
}

// TestRefreshFailures answer like tokend: the contract body and the micro
// error headers.
func TestRefreshFailures(t *testing.T) {
	_, nc := mustStart(t, config{})
	for _, body := range []string{
		`not json`,
		`{}`,
		`{"family_id":"a.b"}`,
		`{"family_id":"a\"b"}`,
		`{"family_id":"` + strings.Repeat("a", maxFamilyID+1) + `"}`,
	} {
		msg := ask(t, nc, "baseline.cmd.refresh", body)
		if got := msg.Header.Get(micro.ErrorCodeHeader); got != "400" || !strings.Contains(string(msg.Data), `"error":"invalid_request"`) {
			t.Errorf("%s: status %q, body %s; want 400 invalid_request", body, got, msg.Data)
		}
	}
}

func TestEventBytesFlag(t *testing.T) {
	for _, n := range []int{minEventBytes - 1, maxEventBytes + 1} {
		if code := run([]string{"--event-bytes", strconv.Itoa(n)}); code != 2 {
			t.Errorf("--event-bytes %d: exit %d, want 2", n, code)
		}
	}
	// The smallest holds the largest fields.
	p := &pipeline{eventBytes: minEventBytes}
	ev := p.event(&request{typ: "token.rotated", fam: &family{id: strings.Repeat("f", maxFamilyID)}}, time.Date(2026, 12, 31, 23, 59, 59, 999999999, time.FixedZone("x", 3600)))
	if len(ev) != minEventBytes || !json.Valid(ev) {
		t.Errorf("event of %d bytes, valid %v: %s", len(ev), json.Valid(ev), ev)
	}
}
