//go:build reliability

package main

// What the reliability tests (crash_test.go, outage_test.go) share: a load
// of families, each rotated by its own goroutine that records every
// acknowledged reply, and the checks that hold the stream and the read model
// to what clients were told.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
)

// acked is an issue or a refresh that a client got a success reply for.
type acked struct {
	gen  uint64
	hash string
	seq  uint64
}

// loadFamily is one family under load.
type loadFamily struct {
	id      string
	current string  // the last acknowledged token
	acked   []acked // the issue first
	// inFlight: a request presenting current got no definite answer, so its
	// rotation may be stored with the reply lost.
	inFlight bool
	// pending is the hash of that stored child, once verify found it.
	pending string
}

// load rotates families, one goroutine each.
type load struct {
	t    *testing.T
	fams []*loadFamily

	acks       atomic.Int64 // success replies
	failures   atomic.Int64 // requests without a success reply (no answer, temporarily_unavailable)
	maxLatency atomic.Int64 // of any request, in nanoseconds
	resolved   int          // rotations stored with their reply lost, returned again by resolve
	reused     int          // token.reused events in the stream: retries answered with the same child
}

// newLoad issues n families.
func newLoad(t *testing.T, nc *nats.Conn, n int) *load {
	l := &load{t: t}
	for i := range n {
		r := mustIssue(t, nc, fmt.Sprintf("user-load-%d", i), "web-app")
		l.fams = append(l.fams, &loadFamily{id: r.FamilyID, current: r.RefreshToken,
			acked: []acked{{gen: 1, hash: domain.HashToken(r.RefreshToken), seq: r.Seq}}})
	}
	return l
}

// run rotates every family until stop is called (or the test ends); stop
// returns once every goroutine has. A request without a success reply is
// retried with the same token, as a client would.
func (l *load) run(nc *nats.Conn, timeout time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	stop = func() { cancel(); wg.Wait() }
	l.t.Cleanup(stop)
	for _, f := range l.fams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				o := tryRefresh(nc, f.current, timeout)
				for {
					cur := l.maxLatency.Load()
					if int64(o.took) <= cur || l.maxLatency.CompareAndSwap(cur, int64(o.took)) {
						break
					}
				}
				if o.ok() {
					if err := l.ack(f, o.token); err != nil {
						l.t.Error(err)
						return
					}
					continue
				}
				if o.err == nil && o.reply.err.Error != domain.EUnavailable {
					l.t.Errorf("family %s: a legitimate refresh was refused: %s", f.id, o.raw)
					return
				}
				f.inFlight = true
				l.failures.Add(1)
				wait := 20 * time.Millisecond
				if o.err == nil && o.reply.err.RetryAfterMs > 0 {
					wait = time.Duration(o.reply.err.RetryAfterMs) * time.Millisecond
				}
				select {
				case <-ctx.Done():
				case <-time.After(wait):
				}
			}
		}()
	}
	return stop
}

// ack records a success reply to a refresh of f.current: it must carry
// the next generation, whether it is a fresh rotation or the child of one
// whose reply was lost.
func (l *load) ack(f *loadFamily, r wire.TokenReply) error {
	last := f.acked[len(f.acked)-1]
	gen, err := parseGeneration(r.RefreshToken)
	if err != nil {
		return err
	}
	if gen != last.gen+1 || r.FamilyID != f.id {
		return fmt.Errorf("family %s: a refresh of generation %d answered generation %d of family %s", f.id, last.gen, gen, r.FamilyID)
	}
	f.acked = append(f.acked, acked{gen: gen, hash: domain.HashToken(r.RefreshToken), seq: r.Seq})
	f.current, f.inFlight = r.RefreshToken, false
	l.acks.Add(1)
	return nil
}

func parseGeneration(token string) (uint64, error) {
	parts := strings.Split(token, ".")
	var gen uint64
	if len(parts) != 6 {
		return 0, fmt.Errorf("not a refresh token: %d parts", len(parts))
	}
	_, err := fmt.Sscanf(parts[2], "%d", &gen)
	return gen, err
}

// verify reads every family's subject and checks it against what clients
// were told: generations 1, 2, 3, … each issued or rotated exactly once (no
// gap, no fork), nothing refused, replayed or revoked, and every
// acknowledged reply stored at its generation, hash and sequence. A family
// may be one rotation ahead only when a request was in flight: its reply
// was lost; pending then names the stored child.
func (l *load) verify(nc *nats.Conn) {
	t := l.t
	t.Helper()
	l.reused = 0
	for _, f := range l.fams {
		evs := familyEvents(t, nc, f.id)
		rotated := map[uint64]storedEvent{}
		bySeq := map[uint64]storedEvent{}
		gen := uint64(0)
		for _, e := range evs {
			bySeq[e.Seq] = e
			switch domain.EventType(e.Type) {
			case domain.TokenIssued, domain.TokenRotated:
				if e.Generation != gen+1 {
					t.Fatalf("family %s: %s of generation %d after generation %d: a gap or a fork", f.id, e.Type, e.Generation, gen)
				}
				gen = e.Generation
				rotated[gen] = e
			case domain.TokenReused:
				if e.Generation != gen {
					t.Fatalf("family %s: token.reused of generation %d at generation %d", f.id, e.Generation, gen)
				}
				l.reused++
			default:
				t.Fatalf("family %s: unexpected %s (reason %q) at seq %d", f.id, e.Type, e.Reason, e.Seq)
			}
		}
		for _, a := range f.acked {
			s, ok := rotated[a.gen]
			if !ok || s.Data.TokenHash != a.hash {
				t.Fatalf("family %s: acknowledged generation %d is not in the stream as acknowledged", f.id, a.gen)
			}
			e, ok := bySeq[a.seq]
			if !ok || e.Generation != a.gen {
				t.Fatalf("family %s: generation %d was acknowledged with seq %d, which holds no event of it", f.id, a.gen, a.seq)
			}
		}
		last := f.acked[len(f.acked)-1].gen
		switch {
		case gen == last:
			f.pending = ""
		case gen == last+1 && f.inFlight:
			f.pending = rotated[gen].Data.TokenHash
		default:
			t.Fatalf("family %s: the stream reached generation %d, clients saw %d (in flight: %v)", f.id, gen, last, f.inFlight)
		}
	}
}

// resolve presents every family's last acknowledged token again, until a
// success reply: it must still work, and when verify found its rotation
// stored with the reply lost, it must return that same child (a retry
// inside the reuse interval), not a second one.
func (l *load) resolve(nc *nats.Conn) {
	t := l.t
	t.Helper()
	for _, f := range l.fams {
		var o outcome
		eventstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
			if o = tryRefresh(nc, f.current, 5*time.Second); o.ok() {
				return nil
			}
			if o.err == nil && o.reply.err.Error != domain.EUnavailable {
				t.Fatalf("family %s: the last acknowledged token does not work: %s", f.id, o.raw)
			}
			return fmt.Errorf("family %s: %v", f.id, o)
		})
		if err := l.ack(f, o.token); err != nil {
			t.Fatal(err)
		}
		switch hash := f.acked[len(f.acked)-1].hash; {
		case f.pending != "" && hash != f.pending:
			t.Fatalf("family %s: a retry of the parent of a stored rotation got another child: a fork", f.id)
		case f.pending != "":
			l.resolved++
		}
		f.pending = ""
	}
}

// waitApplied polls query.audit with min_seq until the read model has
// applied seq.
func waitApplied(t *testing.T, nc *nats.Conn, seq uint64) {
	t.Helper()
	eventstest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		o := tryCall(nc, "tokens.query.audit", wire.AuditRequest{MinSeq: seq, Limit: intp(1)}, 5*time.Second)
		if !o.ok() {
			return fmt.Errorf("query.audit with min_seq %d: %v", seq, o)
		}
		return nil
	})
}

// checkProjections waits for the read model to reach the stream's last
// sequence and checks it holds every event exactly once: one audit row per
// stream message, each family's rows at its events' sequences, and each
// family at the stream's generation, active.
func (l *load) checkProjections(nc *nats.Conn) {
	t := l.t
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	waitApplied(t, nc, lastEventSeq(t, js))
	if rows, n := auditPages(t, nc, wire.AuditRequest{}, wire.MaxAuditLimit), streamEventCount(t, js); uint64(len(rows)) != n {
		t.Fatalf("%d audit rows for %d events in the stream", len(rows), n)
	}
	for _, f := range l.fams {
		evs := familyEvents(t, nc, f.id)
		rows := auditPages(t, nc, wire.AuditRequest{FamilyID: f.id}, wire.MaxAuditLimit)
		if len(rows) != len(evs) {
			t.Fatalf("family %s: %d audit rows, %d events in the stream", f.id, len(rows), len(evs))
		}
		for i, e := range evs {
			if rows[i].Seq != e.Seq || rows[i].ID != e.ID || rows[i].Type != e.Type || rows[i].Generation != e.Generation {
				t.Fatalf("family %s: audit row %d is %s %d at seq %d, the stream has %s %d at seq %d",
					f.id, i, rows[i].Type, rows[i].Generation, rows[i].Seq, e.Type, e.Generation, e.Seq)
			}
		}
		view := mustQuery[wire.FamilyView](t, nc, "tokens.query.family", wire.FamilyRequest{FamilyID: f.id})
		gen := f.acked[len(f.acked)-1].gen
		if view.Generation != gen || view.Status != "active" || len(view.Tokens) != int(gen) {
			t.Fatalf("family %s: read model at generation %d %s with %d tokens, the stream at %d", f.id, view.Generation, view.Status, len(view.Tokens), gen)
		}
	}
}

// rotations returns how many refreshes were acknowledged in all.
func (l *load) rotations() int {
	n := 0
	for _, f := range l.fams {
		n += len(f.acked) - 1
	}
	return n
}

// wantCleanLogs fails on a panic or an error a client would see as
// server_error.
func wantCleanLogs(t *testing.T, logs string) {
	t.Helper()
	for _, bad := range []string{"panic", "command failed", "level=ERROR msg=\"handler"} {
		if strings.Contains(logs, bad) {
			t.Fatalf("the logs hold %q:\n%s", bad, logs)
		}
	}
}
