package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/projections"
	"github.com/tokend/tokend/tokens"
)

// MustJetStream starts an in-process NATS server with JetStream and returns
// its URL and a JetStream context on it.
func MustJetStream(tb testing.TB) (string, jetstream.JetStream) {
	tb.Helper()
	url := eventstest.MustJetStream(tb).ClientURL()
	js, err := jetstream.New(eventstest.MustConnect(tb, url))
	if err != nil {
		tb.Fatal(err)
	}
	return url, js
}

// clock is a test clock the command service reads from several goroutines.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

// produceEvents fills the TOKENS stream through the real command service
// with every kind of event and returns the stream.
func produceEvents(t *testing.T, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	ctx := context.Background()
	subjects := events.Subjects{Prefix: "tokens"}
	stream, err := events.Setup(ctx, js, subjects, events.StreamLimits{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	codec, err := keys.NewKeyset(time.Now()).Codec()
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now().UTC()}
	policy := domain.Policy{ReuseInterval: 10 * time.Second, IdleTTL: time.Hour, AbsoluteTTL: 24 * time.Hour}
	svc := tokens.NewService(events.NewWriter(events.NewStore(js.Conn(), js, stream, subjects), 1024), codec, policy, clk.now)
	web := domain.Context{"ip": "203.0.113.7"}
	for i := range 6 {
		g, err := svc.Issue(ctx, tokens.IssueRequest{Subject: fmt.Sprintf("user-%d", i), ClientID: "web-app",
			Scope: []string{"openid", "api:read"}, Audience: []string{"https://api.example.com"}, Context: web})
		if err != nil {
			t.Fatal(err)
		}
		parent := g.Token.Value()
		child, err := svc.Refresh(ctx, tokens.RefreshRequest{Token: parent, ClientID: "web-app", Context: web})
		if err != nil {
			t.Fatal(err)
		}
		// A retry inside the reuse interval, a foreign client, and (for half
		// the families) a replay after it: reused, rejected, replay + revoked.
		if _, err := svc.Refresh(ctx, tokens.RefreshRequest{Token: parent, ClientID: "web-app"}); err != nil {
			t.Fatal(err)
		}
		if _, err := svc.Refresh(ctx, tokens.RefreshRequest{Token: child.Token.Value(), ClientID: "intruder"}); err == nil {
			t.Fatal("a foreign client's refresh succeeded")
		}
		if i%2 == 0 {
			clk.add(time.Minute)
			if _, err := svc.Refresh(ctx, tokens.RefreshRequest{Token: parent, ClientID: "web-app"}); err == nil {
				t.Fatal("a replay succeeded")
			}
		}
	}
	return stream
}

// queryInt runs a query answering one number on the SQLite file at path.
func queryInt(t *testing.T, path, query string) int64 {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int64
	if err := db.QueryRow(query).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRebuild(t *testing.T) {
	url, js := MustJetStream(t)
	stream := produceEvents(t, js)
	// The read model holds every event.
	evInfo, err := stream.Info(context.Background(), jetstream.WithSubjectFilter("tokens.evt.*"))
	if err != nil {
		t.Fatal(err)
	}
	var msgs uint64
	for _, n := range evInfo.State.Subjects {
		msgs += n
	}
	last, err := events.LastEventSeq(context.Background(), stream, events.Subjects{Prefix: "tokens"})
	if err != nil {
		t.Fatal(err)
	}
	if msgs < 30 {
		t.Fatalf("only %d events produced", msgs)
	}
	path := filepath.Join(t.TempDir(), "x.db")

	r := runCtl(t, "", "--nats-url", url, "rebuild", "--db", path)
	if r.code != 0 {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{fmt.Sprintf("events:      %d\n", msgs), fmt.Sprintf("applied_seq: %d\n", last), "database:    " + path} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, r.stdout)
		}
	}
	if n := queryInt(t, path, "SELECT COUNT(*) FROM audit_events"); n != int64(msgs) {
		t.Fatalf("%d audit_events rows for %d stream messages", n, msgs)
	}
	if n := queryInt(t, path, "SELECT COUNT(DISTINCT type) FROM audit_events"); n != 6 {
		t.Errorf("%d event types in the audit trail, want all 6", n)
	}
	if n := queryInt(t, path, "SELECT COUNT(*) FROM families"); n != 6 {
		t.Errorf("%d families, want 6", n)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("database mode = %v, %v; want 0600 (it holds the audit trail)", st.Mode(), err)
	}

	// An existing path is refused before anything is touched.
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r = runCtl(t, "", "--nats-url", url, "rebuild", "--db", path)
	if r.code != 2 || !strings.Contains(r.stderr, "already exists") || r.stdout != "" {
		t.Fatalf("existing --db: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if after, err := os.ReadFile(path); err != nil || string(after) != string(before) {
		t.Fatalf("the existing database changed (%v)", err)
	}

	r = runCtl(t, "", "--nats-url", url, "--json", "rebuild", "--db", filepath.Join(t.TempDir(), "y.db"))
	if want := fmt.Sprintf(`"applied_seq":%d`, last); r.code != 0 || !strings.HasPrefix(r.stdout, "{") || !strings.Contains(r.stdout, want) {
		t.Fatalf("--json: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestRebuildRefusesExistingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "projections.db")
	if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCtl(t, "", "--nats-url", deadURL, "rebuild", "--db", path)
	if r.code != 2 || !strings.Contains(r.stderr, path+" already exists") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if data, _ := os.ReadFile(path); string(data) != "keep me" {
		t.Fatalf("the file was changed to %q", data)
	}

	fresh := filepath.Join(t.TempDir(), "projections.db")
	if err := os.WriteFile(fresh+"-wal", []byte("old frames"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runCtl(t, "", "--nats-url", deadURL, "rebuild", "--db", fresh)
	if r.code != 2 || !strings.Contains(r.stderr, fresh+"-wal exists") {
		t.Fatalf("leftover -wal: exit %d, stderr %q", r.code, r.stderr)
	}
	if _, err := os.Stat(fresh); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("refused, yet %s was created (%v)", fresh, err)
	}
}

func TestRebuildWithoutStream(t *testing.T) {
	url, _ := MustJetStream(t)
	path := filepath.Join(t.TempDir(), "x.db")
	r := runCtl(t, "", "--nats-url", url, "rebuild", "--db", path)
	if r.code != 1 || !strings.Contains(r.stderr, "no stream TOKENS") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a failed rebuild left %s behind (%v): a retry with the same --db would be refused", path, err)
	}
}

func TestRebuildInterrupted(t *testing.T) {
	url, js := MustJetStream(t)
	last, err := events.LastEventSeq(context.Background(), produceEvents(t, js), events.Subjects{Prefix: "tokens"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "x.db")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db, err := projections.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var stderr syncBuffer
	e := &env{stderr: &stderr, natsURL: url, timeout: 5 * time.Second}
	type outcome struct {
		sum rebuildSummary
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		// A target beyond the stream: only an interrupt ends this rebuild.
		sum, err := project(ctx, e, db, js, events.Subjects{Prefix: "tokens"}, last+100)
		done <- outcome{sum, err}
	}()
	waitFor(t, "the stream applied", func() bool {
		return queryInt(t, path, "SELECT COALESCE(MAX(applied_seq), 0) FROM projection_position") == int64(last)
	})
	cancel()
	var o outcome
	select {
	case o = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("rebuild did not stop on cancel")
	}
	want := fmt.Sprintf("interrupted at seq %d of %d", last, last+100)
	if o.err == nil || !strings.Contains(o.err.Error(), want) || o.sum.applied != last {
		t.Fatalf("err = %v, applied %d; want %q", o.err, o.sum.applied, want)
	}
}
