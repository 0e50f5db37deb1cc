package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
)

// A read model built from one history, opened against a stream holding
// another (a restored backup, a recreated stream), is rebuilt from the
// stream; a read model the stream still holds is kept.

// restorable is a harness on a JetStream server whose store directory the
// test copies (a backup) and starts a server on again (a restore), as an
// operator does with tokend's <data-dir>/jetstream.
type restorable struct {
	*harness
	ns    *server.Server
	store string
}

func mustRestorable(tb testing.TB) *restorable {
	tb.Helper()
	r := &restorable{harness: newHarness(tb)}
	r.start(tb, tb.TempDir())
	return r
}

// start starts a server on the store directory dir and connects to it.
func (r *restorable) start(tb testing.TB, dir string) {
	tb.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		JetStream: true, StoreDir: dir, JetStreamMaxMemory: 64 << 20, JetStreamMaxStore: 1 << 30})
	if err != nil {
		tb.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		tb.Fatal("nats server did not start")
	}
	tb.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	r.ns, r.store = ns, dir
	r.connect(tb, ns.ClientURL())
}

func (r *restorable) stop() {
	r.nc.Close()
	r.ns.Shutdown()
	r.ns.WaitForShutdown()
}

// backup copies the store aside with the server stopped, starts the server
// again and returns the copy.
func (r *restorable) backup(tb testing.TB) string {
	tb.Helper()
	r.stop()
	dir := copyDir(tb, r.store)
	r.start(tb, r.store)
	return dir
}

// restore stops the server and starts one on a copy of backup.
func (r *restorable) restore(tb testing.TB, backup string) {
	tb.Helper()
	r.stop()
	r.start(tb, copyDir(tb, backup))
}

func copyDir(tb testing.TB, dir string) string {
	tb.Helper()
	to := filepath.Join(tb.TempDir(), "store")
	if err := os.CopyFS(to, os.DirFS(dir)); err != nil {
		tb.Fatal(err)
	}
	return to
}

// recreateStream deletes the TOKENS stream and creates it afresh, letting
// messages be deleted if deletable.
// errCodeStreamCreate is nats-server's JSStreamCreateErrF: the stream's
// store could not be created (nats.go names no constant for it).
const errCodeStreamCreate jetstream.ErrorCode = 10049

func (h *harness) recreateStream(tb testing.TB, deletable bool) {
	tb.Helper()
	ctx := context.Background()
	if err := h.js.DeleteStream(ctx, events.StreamName); err != nil {
		tb.Fatal(err)
	}
	cfg := events.StreamConfig(subjects, events.StreamLimits{Replicas: 1})
	cfg.DenyDelete = !deletable
	// The server may still be removing the deleted stream's files (more so
	// while a running projector's consumer asks for it again): it then
	// refuses the new one's store for a moment (10049).
	eventstest.CheckFor(tb, 10*time.Second, 20*time.Millisecond, func() error {
		var err error
		h.stream, err = h.js.CreateStream(ctx, cfg)
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeStreamCreate {
			return err
		}
		if err != nil {
			tb.Fatal(err)
		}
		return nil
	})
	h.withRetention(events.Retention{})
}

// writePast runs workloads until the stream's newest event is after seq,
// and returns that event's sequence.
func (h *harness) writePast(tb testing.TB, seed, seq uint64) uint64 {
	tb.Helper()
	for {
		h.workload(tb, seed, 4)
		if last := h.lastEventSeq(tb); last > seq {
			return last
		}
		seed++
	}
}

func (h *harness) lastEventSeq(tb testing.TB) uint64 {
	tb.Helper()
	last, err := events.LastEventSeq(context.Background(), h.stream, subjects)
	if err != nil {
		tb.Fatal(err)
	}
	return last
}

// logBuffer collects the log lines of a projector's goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// rebuildLine returns the projector's line saying it rebuilds, "" if none.
func (l *logBuffer) rebuildLine() string {
	for line := range strings.Lines(l.String()) {
		if strings.Contains(line, "rebuilding the read model") {
			return line
		}
	}
	return ""
}

func TestReadModelOfAnotherHistoryIsRebuilt(t *testing.T) {
	for _, tc := range []struct {
		name string
		// given changes the stream under a read model that applied it up to
		// applied; backup is a copy of the store from before the last
		// events.
		given func(t *testing.T, r *restorable, backup string, applied uint64)
		// withReason is in the rebuild's log line; "" when the read model is
		// kept.
		withReason string
	}{
		{name: "reopened", given: func(*testing.T, *restorable, string, uint64) {}},
		{name: "server restarted on its store", given: func(t *testing.T, r *restorable, _ string, _ uint64) {
			r.stop()
			r.start(t, r.store)
		}},
		{name: "written to since", given: func(t *testing.T, r *restorable, _ string, applied uint64) {
			r.writePast(t, 7, applied)
		}},
		{name: "another stream", given: func(t *testing.T, r *restorable, _ string, applied uint64) {
			r.recreateStream(t, false)
			r.writePast(t, 7, applied)
		}, withReason: "the stream holds another event at seq"},
		{name: "another stream without the event at the applied seq", given: func(t *testing.T, r *restorable, _ string, applied uint64) {
			r.recreateStream(t, true)
			r.writePast(t, 7, applied)
			if err := r.stream.DeleteMsg(context.Background(), applied); err != nil {
				t.Fatal(err)
			}
		}, withReason: "read model was built from another stream (created "},
		{name: "an older backup restored", given: func(t *testing.T, r *restorable, backup string, _ uint64) {
			r.restore(t, backup)
		}, withReason: "read model is ahead of the stream"},
		{name: "an older backup restored and written to past the applied seq", given: func(t *testing.T, r *restorable, backup string, applied uint64) {
			r.restore(t, backup)
			r.writePast(t, 7, applied)
		}, withReason: "the stream holds another event at seq"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRestorable(t)
			r.workload(t, 1, 4)
			backup := r.backup(t)
			r.workload(t, 2, 4)
			applied := r.lastEventSeq(t)
			db := r.openDB(t, "projections.db")
			r.project(t, db, 50, applied)

			tc.given(t, r, backup, applied)
			logs := &logBuffer{}
			p := r.projector(t, db, logs.logger())
			line := logs.rebuildLine()
			if tc.withReason == "" {
				if line != "" || p.Applied() != applied {
					t.Fatalf("a read model the stream holds was not kept: applied %d of %d; log:\n%s", p.Applied(), applied, logs)
				}
			} else {
				if !strings.Contains(line, "level=WARN") || !strings.Contains(line, tc.withReason) {
					t.Fatalf("no warning that the read model is rebuilt because %q; log:\n%s", tc.withReason, logs)
				}
				// Emptied before NewProjector returns: nothing answers from
				// the old rows, and /readyz sees the whole stream as lag.
				if n := count(t, db, "audit_events") + count(t, db, "families"); p.Applied() != 0 || n != 0 {
					t.Fatalf("rebuild starts at seq %d with %d rows left", p.Applied(), n)
				}
			}
			last := r.lastEventSeq(t)
			runUntil(t, p, last)
			fresh := r.openDB(t, "fresh.db")
			r.project(t, fresh, 1000, last)
			if got, want := dump(t, db), dump(t, fresh); !reflect.DeepEqual(got, want) {
				t.Fatalf("the read model differs from a fresh rebuild:\n%v\nwant\n%v", got, want)
			}
		})
	}
}

func count(tb testing.TB, db *DB, table string) int {
	tb.Helper()
	var n int
	if err := db.reader.QueryRow("SELECT count(*) FROM " + table).Scan(&n); err != nil {
		tb.Fatal(err)
	}
	return n
}

// TestReadModelKeptWhenItsLastMessageIsGone: the message the read model
// applied last may leave the stream (its TTL or MaxAge runs out): that
// proves nothing against the read model, before or after the server
// restarts.
func TestReadModelKeptWhenItsLastMessageIsGone(t *testing.T) {
	r := mustRestorable(t)
	// Deleting the message stands in for its expiry, which a test cannot
	// keep from happening before the projector has read it.
	r.recreateStream(t, true)
	r.workload(t, 1, 4)
	ctx := context.Background()
	// Not an event, so the read model holds no row of it that a rebuild
	// would lack; only its position.
	ack, err := r.js.Publish(ctx, subjects.Family("leaving"), []byte("not an event"))
	if err != nil {
		t.Fatal(err)
	}
	db := r.openDB(t, "projections.db")
	r.project(t, db, 50, ack.Sequence)
	if err := r.stream.DeleteMsg(ctx, ack.Sequence); err != nil {
		t.Fatal(err)
	}
	for _, step := range []string{"gone", "server restarted"} {
		if step == "server restarted" {
			r.stop()
			r.start(t, r.store)
		}
		logs := &logBuffer{}
		if p := r.projector(t, db, logs.logger()); p.Applied() != ack.Sequence || logs.rebuildLine() != "" {
			t.Fatalf("%s: the read model was not kept: applied %d of %d; log:\n%s", step, p.Applied(), ack.Sequence, logs)
		}
	}
	r.workload(t, 2, 4)
	last := r.lastEventSeq(t)
	r.project(t, db, 50, last)
	fresh := r.openDB(t, "fresh.db")
	r.project(t, fresh, 1000, last)
	if got, want := dump(t, db), dump(t, fresh); !reflect.DeepEqual(got, want) {
		t.Fatalf("the read model differs from a fresh rebuild:\n%v\nwant\n%v", got, want)
	}
}

// TestReadModelFromBeforeMigration7: a read model that never recorded what
// it was built from is kept, and records it with its next batch.
func TestReadModelFromBeforeMigration7(t *testing.T) {
	h := MustHarness(t)
	h.workload(t, 1, 4)
	applied := h.lastEventSeq(t)
	db := h.openDB(t, "projections.db")
	h.project(t, db, 50, applied)
	if _, err := db.writer.Exec("UPDATE projection_position SET applied_hash = NULL, stream_created = NULL"); err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	p := h.projector(t, db, logs.logger())
	if p.Applied() != applied || logs.rebuildLine() != "" {
		t.Fatalf("the read model was not kept: applied %d of %d; log:\n%s", p.Applied(), applied, logs)
	}
	h.workload(t, 2, 1)
	last := h.lastEventSeq(t)
	runUntil(t, p, last)
	pos, err := readPosition(context.Background(), db.R)
	if err != nil {
		t.Fatal(err)
	}
	if pos.hash == nil || !pos.created.Equal(h.stream.CachedInfo().Created) {
		t.Fatalf("the next batch did not record the stream: %+v", pos)
	}
}

// TestStreamReplacedUnderARunningProjector: with --nats-url the stream can
// be replaced while tokend runs; the projector notices and rebuilds.
func TestStreamReplacedUnderARunningProjector(t *testing.T) {
	h := MustHarness(t)
	h.workload(t, 1, 4)
	applied := h.lastEventSeq(t)
	db := h.openDB(t, "projections.db")
	logs := &logBuffer{}
	p := h.projector(t, db, logs.logger())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { // as cmd/tokend runs it
		defer close(done)
		for ctx.Err() == nil {
			if err := p.Run(ctx); err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
	}()
	defer func() { cancel(); <-done }()
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	if err := p.WaitFor(wctx, applied); err != nil {
		t.Fatal(err)
	}

	h.recreateStream(t, false)
	h.workload(t, 2, 4)
	last := h.lastEventSeq(t)
	fresh := h.openDB(t, "fresh.db")
	h.project(t, fresh, 1000, last)
	want := dump(t, fresh)
	eventstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if !reflect.DeepEqual(dump(t, db), want) {
			return fmt.Errorf("the read model (applied %d) is not the new stream's (last %d); log:\n%s", p.Applied(), last, logs)
		}
		return nil
	})
	if line := logs.rebuildLine(); !strings.Contains(line, "level=WARN") {
		t.Fatalf("no warning that the read model is rebuilt; log:\n%s", logs)
	}
}

func TestMismatch(t *testing.T) {
	created := time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)
	later := created.Add(time.Hour)
	event, other := messageHash("tokens.evt.f1", []byte(`{"id":"a"}`)), messageHash("tokens.evt.f1", []byte(`{"id":"b"}`))
	for _, tc := range []struct {
		name       string
		givenPos   position
		withStream streamState
		thenReason string // a part of the reason; "" to go on
	}{
		{"a new read model", position{}, streamState{created: created}, ""},
		{"the same stream", position{7, event, created}, streamState{created, 9, event}, ""},
		{"the event at the position gone", position{7, event, created}, streamState{created, 9, nil}, ""},
		{"every event gone", position{7, event, created}, streamState{created, 7, nil}, ""},
		{"ahead of the stream", position{7, event, created}, streamState{created, 6, nil}, "ahead of the stream: applied seq 7, the stream's last seq is 6"},
		{"ahead of an empty stream", position{7, event, created}, streamState{later, 0, nil}, "ahead of the stream"},
		{"another event at the position", position{7, event, created}, streamState{created, 9, other}, "another event at seq 7"},
		{"another stream, the event at the position gone", position{7, event, created}, streamState{later, 9, nil},
			"another stream (created 2025-03-01T12:00:00.123456789Z, this one 2025-03-01T13:00:00.123456789Z)"},
		{"another stream with another event at the position", position{7, event, created}, streamState{later, 9, other}, "another event at seq 7"},
		// A restore into a cluster gives the stream a new created time.
		{"the same history under a new created time", position{7, event, created}, streamState{later, 9, event}, ""},
		{"unknown identity", position{seq: 7}, streamState{later, 9, other}, ""},
		{"unknown identity, ahead", position{seq: 7}, streamState{created, 6, nil}, "ahead of the stream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mismatch(tc.givenPos, tc.withStream)
			if (got == "") != (tc.thenReason == "") || !strings.Contains(got, tc.thenReason) {
				t.Fatalf("mismatch = %q, want %q", got, tc.thenReason)
			}
		})
	}
}
