package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/queries"
	"github.com/tokend/tokend/tokens"
)

var subjects = events.Subjects{Prefix: "tokens"}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type harness struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	stream  jetstream.Stream
	codec   *domain.TokenCodec
	policy  domain.Policy
	svc     *tokens.Service
	writer  *events.Writer // svc's, for the DPoP outcomes svc does not decide yet (dpopWorkload)
	now     time.Time
	dataDir string
}

// MustHarness starts JetStream in-process with the TOKENS stream and a
// command service whose clock the test moves.
func MustHarness(tb testing.TB) *harness {
	tb.Helper()
	h := newHarness(tb)
	h.connect(tb, eventstest.MustJetStream(tb).ClientURL())
	return h
}

// newHarness returns a harness yet to connect.
func newHarness(tb testing.TB) *harness {
	tb.Helper()
	codec, err := keys.NewKeyset(time.Now()).Codec()
	if err != nil {
		tb.Fatal(err)
	}
	return &harness{codec: codec, now: time.Now().UTC(), dataDir: tb.TempDir(),
		policy: domain.Policy{ReuseInterval: 10 * time.Second, IdleTTL: time.Hour, AbsoluteTTL: 24 * time.Hour}}
}

// connect points h at the JetStream server at url, with the TOKENS stream
// (created if the server has none).
func (h *harness) connect(tb testing.TB, url string) {
	tb.Helper()
	h.nc = eventstest.MustConnect(tb, url)
	h.js, _ = jetstream.New(h.nc)
	var err error
	if h.stream, err = events.Setup(context.Background(), h.js, subjects, events.StreamLimits{Replicas: 1}); err != nil {
		tb.Fatal(err)
	}
	h.withRetention(events.Retention{})
}

// withRetention makes h.svc store events with the TTLs r gives them (none
// for the zero Retention).
func (h *harness) withRetention(r events.Retention) {
	store := events.NewStore(h.nc, h.js, h.stream, subjects)
	store.Retention = r
	h.writer = events.NewWriter(store, 1024)
	h.svc = tokens.NewService(h.writer, h.codec, h.policy, h.clock)
}

// workload runs a seeded mix of every command outcome over several families
// and returns the stream's last sequence.
func (h *harness) workload(tb testing.TB, seed uint64, families int) uint64 {
	tb.Helper()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 1))
	type fam struct{ tokens []string }
	fams := make([]*fam, families)
	var last uint64
	track := func(g tokens.Grant, err error) {
		if err == nil && g.Seq > last {
			last = g.Seq
		}
	}
	for i := range fams {
		g, err := h.svc.Issue(ctx, tokens.IssueRequest{Subject: fmt.Sprintf("user-%d", i%5), ClientID: fmt.Sprintf("client-%d", i%3),
			Scope: []string{"openid", "api:read"}, Audience: []string{"https://api.example.com"}, Context: domain.Context{"ip": "203.0.113.7"}})
		if err != nil {
			tb.Fatal(err)
		}
		track(g, nil)
		fams[i] = &fam{tokens: []string{g.Token.Value()}}
	}
	for range families * 12 {
		i := rng.IntN(len(fams))
		f := fams[i]
		h.now = h.now.Add(time.Duration(rng.IntN(4000)) * time.Millisecond)
		cur := f.tokens[len(f.tokens)-1]
		client := "client-0"
		switch r := rng.IntN(20); {
		case r < 12: // rotate (or a refusal, if revoked)
			g, err := h.svc.Refresh(ctx, tokens.RefreshRequest{Token: cur, ClientID: h.clientOf(tb, cur)})
			track(g, err)
			if err == nil {
				f.tokens = append(f.tokens, g.Token.Value())
			}
		case r < 14 && len(f.tokens) > 1: // retry with the parent: reuse or replay
			track(h.svc.Refresh(ctx, tokens.RefreshRequest{Token: f.tokens[len(f.tokens)-2], ClientID: h.clientOf(tb, cur)}))
		case r < 16: // foreign client: two of them, so a filter by presenter has one to leave out
			track(h.svc.Refresh(ctx, tokens.RefreshRequest{Token: cur, ClientID: fmt.Sprintf("intruder-%d", i%2)}))
		case r < 17: // up-scope
			track(h.svc.Refresh(ctx, tokens.RefreshRequest{Token: cur, ClientID: h.clientOf(tb, cur), Scope: []string{"admin"}}))
		case r < 18:
			_, seq, _ := h.svc.RevokeToken(ctx, cur, "", "user_disabled", nil)
			last = max(last, seq)
		default:
			_ = client
			track(h.svc.Refresh(ctx, tokens.RefreshRequest{Token: f.tokens[0], ClientID: h.clientOf(tb, cur)}))
		}
	}
	return max(last, h.dpopWorkload(tb))
}

// clientOf reads a token's family owner from the stream, as a caller would know it.
func (h *harness) clientOf(tb testing.TB, token string) string {
	tb.Helper()
	familyID := strings.Split(token, ".")[1]
	s, _ := h.js.Stream(context.Background(), events.StreamName)
	m, err := s.GetLastMsgForSubject(context.Background(), subjects.Family(familyID))
	if err != nil {
		tb.Fatal(err)
	}
	env, err := events.Decode(m.Data, familyID)
	if err != nil {
		tb.Fatal(err)
	}
	return env.ClientID
}

func (h *harness) openDB(tb testing.TB, name string) *DB {
	tb.Helper()
	db, err := Open(context.Background(), filepath.Join(h.dataDir, name))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// project runs a projector on db until it has applied seq, then stops it.
func (h *harness) project(tb testing.TB, db *DB, batch int, seq uint64) *Projector {
	tb.Helper()
	p := h.projector(tb, db, quiet)
	p.BatchSize = batch
	runUntil(tb, p, seq)
	return p
}

// projector returns a projector on db that logs to log.
func (h *harness) projector(tb testing.TB, db *DB, log *slog.Logger) *Projector {
	tb.Helper()
	p, err := NewProjector(context.Background(), db, h.js, subjects, log)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// runUntil runs p until it has applied seq, then stops it.
func runUntil(tb testing.TB, p *Projector, seq uint64) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer wcancel()
	if err := p.WaitFor(wctx, seq); err != nil {
		tb.Fatalf("projector reached %d of %d: %v", p.Applied(), seq, err)
	}
	cancel()
	if err := <-done; err != nil {
		tb.Fatal(err)
	}
}

// rewind moves db's position back to seq, where the projector then
// resumes, applying events a second time. The identity of the message at
// seq is left unknown, as in a read model from before migration 0007.
func rewind(tb testing.TB, db *DB, seq int64) {
	tb.Helper()
	if err := db.W.SetPosition(context.Background(), queries.SetPositionParams{AppliedSeq: seq}); err != nil {
		tb.Fatal(err)
	}
}

// streamEvents reads the whole stream, in order.
func (h *harness) streamEvents(tb testing.TB) []storedEvent {
	tb.Helper()
	ctx := context.Background()
	cons, err := h.js.OrderedConsumer(ctx, events.StreamName, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subjects.Events()}})
	if err != nil {
		tb.Fatal(err)
	}
	s, _ := h.js.Stream(ctx, events.StreamName)
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subjects.Events()))
	if err != nil {
		tb.Fatal(err)
	}
	var total uint64 // every event of every family
	for _, n := range info.State.Subjects {
		total += n
	}
	var out []storedEvent
	for uint64(len(out)) < total {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			tb.Fatal(err)
		}
		for m := range batch.Messages() {
			md, _ := m.Metadata()
			env, err := events.Decode(m.Data(), subjects.FamilyOf(m.Subject()))
			if err != nil {
				tb.Fatal(err)
			}
			out = append(out, storedEvent{seq: md.Sequence.Stream, env: env})
		}
		if batch.Error() != nil {
			tb.Fatal(batch.Error())
		}
	}
	return out
}

type storedEvent struct {
	seq uint64
	env events.Envelope
}

// dump returns every row of the read model as text, in key order.
func dump(tb testing.TB, db *DB) map[string][]string {
	tb.Helper()
	out := map[string][]string{}
	for table, order := range map[string]string{"families": "family_id", "audit_events": "seq", "projection_position": "id"} {
		rows, err := db.reader.Query("SELECT * FROM " + table + " ORDER BY " + order)
		if err != nil {
			tb.Fatal(err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				tb.Fatal(err)
			}
			out[table] = append(out[table], fmt.Sprint(vals...))
		}
		rows.Close()
	}
	return out
}

func TestProjectionEqualsStream(t *testing.T) {
	h := MustHarness(t)
	last := h.workload(t, 1, 12)
	db := h.openDB(t, "projections.db")
	h.project(t, db, 50, last)

	stream := h.streamEvents(t)
	rows := dump(t, db)
	if len(rows["audit_events"]) != len(stream) {
		t.Fatalf("%d audit rows for %d stream events", len(rows["audit_events"]), len(stream))
	}
	types := map[string]int{}
	byFamily := map[string][]domain.Event{}
	lastSeqOf := map[string]uint64{}
	presented := map[string]int{} // events naming a foreign presenter, a presented generation, a bound key, a presented key
	for i, e := range stream {
		types[e.env.Type]++
		var seq, presentedGen int64
		var id, typ, presentedBy, dpopJKT, presentedJKT string
		if err := db.reader.QueryRow("SELECT seq, id, type, presented_by, presented_generation, dpop_jkt, presented_jkt FROM audit_events WHERE seq = ?",
			e.seq).Scan(&seq, &id, &typ, &presentedBy, &presentedGen, &dpopJKT, &presentedJKT); err != nil {
			t.Fatalf("stream event %d (seq %d) missing from audit: %v", i, e.seq, err)
		}
		if id != e.env.ID || typ != e.env.Type || presentedBy != e.env.PresentedBy || uint64(presentedGen) != e.env.PresentedGeneration {
			t.Fatalf("seq %d: audit row %s/%s presented by %q generation %d, stream %s/%s presented by %q generation %d",
				e.seq, id, typ, presentedBy, presentedGen, e.env.ID, e.env.Type, e.env.PresentedBy, e.env.PresentedGeneration)
		}
		if dpopJKT != e.env.DPoPJKT || presentedJKT != e.env.PresentedJKT {
			t.Fatalf("seq %d: audit row bound to %q presented %q, stream %q %q", e.seq, dpopJKT, presentedJKT, e.env.DPoPJKT, e.env.PresentedJKT)
		}
		if presentedBy != "" {
			presented["by"]++
		}
		if presentedGen != 0 {
			presented["generation"]++
		}
		if dpopJKT != "" {
			presented["bound"]++
		}
		if presentedJKT != "" {
			presented["jkt"]++
		}
		byFamily[e.env.FamilyID] = append(byFamily[e.env.FamilyID], e.env.Event())
		lastSeqOf[e.env.FamilyID] = e.seq
	}
	for _, want := range []string{"token.issued", "token.rotated", "token.reused", "token.replay_detected", "family.revoked", "refresh.rejected",
		"token.key_mismatch"} {
		if types[want] == 0 {
			t.Errorf("the workload produced no %s: %v", want, types)
		}
	}
	if presented["by"] == 0 || presented["generation"] == 0 || presented["bound"] == 0 || presented["jkt"] == 0 {
		t.Errorf("the workload named no presenter, presented generation, bound key or presented key: %v", presented)
	}
	ctx := context.Background()
	for id, evs := range byFamily {
		want := domain.Fold(evs)
		row, err := db.R.GetFamily(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got := familyOf(row); !reflect.DeepEqual(normalize(got), normalize(want)) || uint64(row.LastSeq) != lastSeqOf[id] {
			t.Fatalf("family %s:\nprojected %+v\nfolded    %+v", id, got, want)
		}
		toks, err := db.R.FamilyTokens(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if uint64(len(toks)) != want.Generation {
			t.Fatalf("family %s: %d token rows for generation %d", id, len(toks), want.Generation)
		}
		for i, tok := range toks {
			if uint64(tok.Generation) != uint64(i+1) || (tok.RotatedAt != 0) != (i+1 < len(toks)) {
				t.Fatalf("family %s token %d: generation %d rotated at %d", id, i, tok.Generation, tok.RotatedAt)
			}
		}
	}
	if len(rows["families"]) != len(byFamily) {
		t.Fatalf("%d family rows, %d families in the stream", len(rows["families"]), len(byFamily))
	}
}

func normalize(f domain.Family) domain.Family {
	for _, t := range []*time.Time{&f.RotatedAt, &f.CreatedAt, &f.LastUsedAt, &f.IdleExpiresAt, &f.AbsoluteExpiresAt, &f.RevokedAt} {
		*t = t.UTC().Round(0)
	}
	f.ParentHash, f.RotatedAt = "", time.Time{} // the decider's working state, not projected
	if len(f.Scope) == 0 {
		f.Scope = nil
	}
	if len(f.Audience) == 0 {
		f.Audience = nil
	}
	return f
}

func TestProjectorStoppedBetweenBatchesLosesAndRepeatsNothing(t *testing.T) {
	h := MustHarness(t)
	last := h.workload(t, 2, 8)
	whole := h.openDB(t, "whole.db")
	h.project(t, whole, 1000, last)

	db := h.openDB(t, "interrupted.db")
	for stop := last / 4; stop < last; stop += last / 4 {
		p := h.project(t, db, 7, stop) // stops somewhere at or after stop
		if p.Applied() < stop {
			t.Fatalf("applied %d < %d", p.Applied(), stop)
		}
	}
	h.project(t, db, 7, last)
	if got, want := dump(t, db), dump(t, whole); !reflect.DeepEqual(got, want) {
		t.Fatal("a projector stopped and restarted between batches differs from one that ran through")
	}

	// Re-delivery: move the position back and apply the tail again.
	rewind(t, db, int64(last/2))
	h.project(t, db, 13, last)
	if got, want := dump(t, db), dump(t, whole); !reflect.DeepEqual(got, want) {
		t.Fatal("applying events a second time changed the read model")
	}
}

func TestRebuildFromScratchIsIdentical(t *testing.T) {
	h := MustHarness(t)
	mustRebuildIdentically(t, h, 3)
}

// mustRebuildIdentically projects a workload of seed in batches of 100 and
// again in batches of 1000 into a fresh database, fails unless the two read
// models are the same and hold audit rows, and returns the first's dump.
func mustRebuildIdentically(t *testing.T, h *harness, seed uint64) map[string][]string {
	t.Helper()
	last := h.workload(t, seed, 8)
	first := h.openDB(t, "first.db")
	h.project(t, first, 100, last)
	rebuilt := h.openDB(t, "rebuilt.db")
	h.project(t, rebuilt, 1000, last)
	a, b := dump(t, first), dump(t, rebuilt)
	if len(a["audit_events"]) == 0 || !reflect.DeepEqual(a, b) {
		t.Fatal("a rebuild from the stream differs from the original read model")
	}
	return a
}

// TestRotationsWriteTheirFamily: a batch holding only rotations of a family
// writes just the columns they change, yet still creates the family's row
// if it is missing, and gives a row from before retention its prune_at.
func TestRotationsWriteTheirFamily(t *testing.T) {
	h := MustHarness(t)
	h.withRetention(events.Retention{AfterExpiry: time.Hour, Archive: 2 * time.Hour})
	ctx := context.Background()
	var ids []string
	var issued []int64 // each family's first seq
	var last uint64
	for i := range 2 {
		g, err := h.svc.Issue(ctx, tokens.IssueRequest{Subject: fmt.Sprintf("user-%d", i), ClientID: "c"})
		if err != nil {
			t.Fatal(err)
		}
		ids, issued = append(ids, g.Family.ID), append(issued, int64(g.Seq))
		for range 3 {
			if g, err = h.svc.Refresh(ctx, tokens.RefreshRequest{Token: g.Token.Value(), ClientID: "c"}); err != nil {
				t.Fatal(err)
			}
		}
		last = g.Seq
	}
	db := h.openDB(t, "projections.db")
	h.project(t, db, 1000, last)
	want, err := db.R.GetFamily(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	// Applied again from the family's rotations on, its row is as before,
	// but for the earliest expiry, now of the rotations' rows.
	reapply := func(step string) {
		t.Helper()
		rewind(t, db, issued[0])
		h.project(t, db, 1000, last)
		got, err := db.R.GetFamily(ctx, ids[0])
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		var firstExpiry sql.NullInt64
		if err := db.reader.QueryRow("SELECT min(expires_at) FROM audit_events WHERE family_id = ? AND seq > ?",
			ids[0], issued[0]).Scan(&firstExpiry); err != nil {
			t.Fatal(err)
		}
		if !firstExpiry.Valid || got.PruneAt != firstExpiry {
			t.Fatalf("%s: prune_at %v after rotations expiring from %v", step, got.PruneAt, firstExpiry)
		}
		got.PruneAt = want.PruneAt
		if got != want {
			t.Fatalf("%s: family row\n%+v\nwant\n%+v", step, got, want)
		}
	}
	if _, err := db.writer.Exec("DELETE FROM families WHERE family_id = ?", ids[0]); err != nil {
		t.Fatal(err)
	}
	reapply("without a row")
	// A row as it stood after the family's first event, without prune_at
	// (from before retention).
	if _, err := db.writer.Exec("UPDATE families SET prune_at = NULL, last_seq = ? WHERE family_id = ?", issued[0], ids[0]); err != nil {
		t.Fatal(err)
	}
	reapply("without prune_at")
}

func TestMalformedMessageIsSkipped(t *testing.T) {
	h := MustHarness(t)
	h.workload(t, 4, 2)
	ack, err := h.js.Publish(context.Background(), subjects.Family("forged"), []byte(`{"type":"token.issued","refresh_token":"secret"}`))
	if err != nil {
		t.Fatal(err)
	}
	db := h.openDB(t, "projections.db")
	p := h.project(t, db, 10, ack.Sequence)
	if p.Skipped() != 1 || p.Applied() != ack.Sequence {
		t.Fatalf("skipped %d, applied %d of %d", p.Skipped(), p.Applied(), ack.Sequence)
	}
	if _, err := db.R.GetFamily(context.Background(), "forged"); err != sql.ErrNoRows {
		t.Fatalf("a forged message made a family: %v", err)
	}
}

// TestDeploymentEventsAreNotTheReadModels: deployment events share the
// stream with the families' events, but the projector neither reads them
// (they would count as skipped foreign messages) nor waits for them (they
// would count as lag, and keep /readyz and CatchUp waiting forever).
func TestDeploymentEventsAreNotTheReadModels(t *testing.T) {
	h := MustHarness(t)
	last := h.workload(t, 5, 3)
	store := events.NewStore(h.nc, h.js, h.stream, subjects)
	for _, ev := range []events.DeploymentEvent{
		events.SubjectRevokedEvent("user-1", "user_disabled", 0, last, h.now),
		events.KeyRevokedEvent("k-1", "mac", "leaked", "alice", 3, h.now),
		events.VerificationEvent("0123456789abcdef0123456789abcdef", "", h.now),
	} {
		if _, err := store.AppendDeployment(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	g, err := h.svc.Issue(context.Background(), tokens.IssueRequest{Subject: "user-9", ClientID: "client-0"})
	if err != nil {
		t.Fatal(err)
	}
	// And one deployment event after the last family event.
	if _, err := store.AppendDeployment(context.Background(), events.ClientRevokedEvent("client-1", "revoked", 0, g.Seq, h.now)); err != nil {
		t.Fatal(err)
	}
	p := h.project(t, h.openDB(t, "projections.db"), 10, g.Seq)
	if p.Skipped() != 0 {
		t.Fatalf("the projector skipped %d deployment events as foreign messages", p.Skipped())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if caughtUp, err := p.CatchUp(ctx); err != nil || caughtUp != g.Seq {
		t.Fatalf("CatchUp reached %d, %v; want the last family event, %d", caughtUp, err, g.Seq)
	}
	if p.Lag() != 0 {
		t.Fatalf("lag %d after catching up: deployment events count", p.Lag())
	}
}

func TestMigrationsAreIdempotent(t *testing.T) {
	h := MustHarness(t)
	h.openDB(t, "projections.db").Close()
	db := h.openDB(t, "projections.db")
	var version int
	if err := db.reader.QueryRow("PRAGMA user_version").Scan(&version); err != nil || version < 1 {
		t.Fatalf("user_version %d, %v", version, err)
	}
}

// TestMigrationBoundsExistingEvents: migration 0003 computes the time
// bounds of the audit rows a read model already holds.
func TestMigrationBoundsExistingEvents(t *testing.T) {
	path := filepath.Join(t.TempDir(), "projections.db")
	old := migratedTo(t, path, 2)
	defer old.Close()
	times := []int64{10, 30, 20, 40, 15, 50}
	for i, at := range times {
		if _, err := old.Exec(`INSERT INTO audit_events (seq, id, type, time, family_id, subject, client_id, generation, reason, context)
			VALUES (?, ?, 'token.issued', ?, 'f', 's', 'c', 1, '', '{}')`, i+1, fmt.Sprint(i), at); err != nil {
			t.Fatal(err)
		}
	}
	db := mustUpgrade(t, old, path)
	rows, err := db.reader.Query("SELECT max_time_upto, min_time_from FROM audit_events ORDER BY seq")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got [][2]int64
	for rows.Next() {
		var b [2]int64
		if err := rows.Scan(&b[0], &b[1]); err != nil {
			t.Fatal(err)
		}
		got = append(got, b)
	}
	want := [][2]int64{{10, 10}, {30, 15}, {30, 15}, {40, 15}, {40, 15}, {50, 50}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("bounds (latest up to, earliest from) %v, want %v", got, want)
	}
}

// migratedTo returns the database at path with the first n migrations
// applied, as a version of tokend that had only those left it.
// mustUpgrade closes old, a read model migratedTo an earlier version, and
// opens it as tokend does, running the migrations since.
func mustUpgrade(tb testing.TB, old *sql.DB, path string) *DB {
	tb.Helper()
	old.Close()
	db, err := Open(context.Background(), path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

func migratedTo(tb testing.TB, path string, n int) *sql.DB {
	tb.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		tb.Fatal(err)
	}
	names, err := fs.Glob(queries.Migrations, "migrations/*.sql")
	if err != nil || len(names) < n {
		tb.Fatalf("%d migrations: %v", len(names), err)
	}
	slices.Sort(names)
	for _, name := range names[:n] {
		body, err := fs.ReadFile(queries.Migrations, name)
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := db.Exec(string(body)); err != nil {
			tb.Fatalf("%s: %v", name, err)
		}
	}
	if _, err := db.Exec(fmt.Sprintf("PRAGMA user_version = %d", n)); err != nil {
		tb.Fatal(err)
	}
	return db
}

// TestMigrationPrunesByFamily: migration 0006 keeps a read model's rows,
// gives each family the earliest expiry of its audit rows (or, with none,
// the time its old row was to go), and pruning goes on from there,
// including the rows from before retention.
func TestMigrationPrunesByFamily(t *testing.T) {
	path := filepath.Join(t.TempDir(), "projections.db")
	old := migratedTo(t, path, 5)
	defer old.Close()
	for _, f := range []struct {
		id      string
		purgeAt any
	}{{"dated", 300}, {"undated", nil}, {"emptied", 150}} {
		if _, err := old.Exec(`INSERT INTO families (family_id, subject, client_id, scope, audience, status, generation,
			current_hash, created_at, last_used_at, idle_expires_at, absolute_expires_at, revoked_at, revoked_reason,
			last_seq, archived_at, purge_at) VALUES (?, 's', 'c', 'openid', '[]', 'active', 2, 'h-'||?, 10, 20, 5000, 9000,
			NULL, '', 9, NULL, ?)`, f.id, f.id, f.purgeAt); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range []struct {
		seq       int
		family    string
		time      int64
		expiresAt any
	}{{1, "dated", 10, 100}, {2, "dated", 20, 200}, {3, "undated", 50, nil}, {4, "dated", 30, 300}, {5, "undated", 60, nil}} {
		if _, err := old.Exec(`INSERT INTO audit_events (seq, id, type, time, family_id, subject, client_id, generation, reason,
			context, max_time_upto, min_time_from, expires_at) VALUES (?, ?, 'token.rotated', ?, ?, 's', 'c', 1, '', '{}', ?, ?, ?)`,
			e.seq, fmt.Sprint(e.seq), e.time, e.family, e.time, e.time, e.expiresAt); err != nil {
			t.Fatal(err)
		}
	}
	db := mustUpgrade(t, old, path)
	ctx := context.Background()
	if got := dump(t, db); len(got["audit_events"]) != 5 || len(got["families"]) != 3 {
		t.Fatalf("after the migration: %v", got)
	}
	f, err := db.R.GetFamily(ctx, "dated")
	if err != nil || f.Generation != 2 || f.CurrentHash != "h-dated" || f.PruneAt != nullTime(100) {
		t.Fatalf("family after the migration: %+v %v", f, err)
	}
	var dropped int
	if err := db.reader.QueryRow(`SELECT count(*) FROM sqlite_master WHERE name IN ('audit_by_max_time', 'audit_by_min_time',
		'audit_by_expiry', 'families_by_purge', 'families_undated')`).Scan(&dropped); err != nil || dropped != 0 {
		t.Fatalf("%d dropped indexes left: %v", dropped, err)
	}

	p, err := NewProjector(ctx, db, nil, subjects, quiet)
	if err != nil {
		t.Fatal(err)
	}
	p.MaxAge = 1000 // the undated rows' events go 1000 ns after their time
	for _, step := range []struct {
		now      int64
		seqs     []int64
		families []string
	}{
		{99, []int64{1, 2, 3, 4, 5}, []string{"dated", "emptied", "undated"}},
		{150, []int64{2, 3, 4, 5}, []string{"dated", "undated"}},
		{300, []int64{3, 5}, []string{"undated"}},
		{1050, []int64{5}, []string{"undated"}},
		{1060, nil, nil},
	} {
		if _, err := p.Prune(ctx, time.Unix(0, step.now)); err != nil {
			t.Fatal(err)
		}
		families := familyIDs(t, db)
		if got := auditSeqs(t, db); !slices.Equal(got, step.seqs) || !slices.Equal(families, step.families) {
			t.Fatalf("pruned at %d: audit rows %v, families %v; want %v, %v", step.now, got, families, step.seqs, step.families)
		}
	}
}

// TestWaiterCutsLingerShort: under load the projector waits to fill large
// batches, but not while a caller waits for a sequence (read-your-writes,
// revoke by subject). The projector is made busy deterministically and its
// linger is an hour, so the wait below ends only if the waiter cuts it short.
func TestWaiterCutsLingerShort(t *testing.T) {
	h := MustHarness(t)
	db := h.openDB(t, "projections.db")
	ctx := context.Background()
	p, err := NewProjector(ctx, db, h.js, subjects, quiet)
	if err != nil {
		t.Fatal(err)
	}
	p.BatchSize, p.Linger = 1000, time.Hour
	// Each batch is held until the test has seen its size, so events
	// published meanwhile queue up for the next one, and the test knows when
	// a batch of more than one event made the projector busy.
	sizes, free := make(chan int), make(chan struct{})
	p.OnBatch = func(n int, _ time.Duration) {
		select {
		case sizes <- n:
		case <-free:
		}
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	freed := false
	defer func() {
		if !freed {
			close(free)
		}
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	for round := 0; ; round++ {
		if round == 100 {
			t.Fatal("100 bursts of events were each applied one event at a time")
		}
		var last uint64
		for i := range 20 {
			g, err := h.svc.Issue(ctx, tokens.IssueRequest{Subject: fmt.Sprintf("burst-%d-%d", round, i), ClientID: "c"})
			if err != nil {
				t.Fatal(err)
			}
			last = g.Seq
		}
		busy := false
		for !busy && p.Applied() < last { // idle, every event is applied at once
			busy = <-sizes > 1
		}
		if busy {
			break
		}
	}
	close(free)
	freed = true

	// Busy, the projector lingers an hour over its next batch: the rest of
	// the burst and this event. A minute is ample to apply them once the
	// waiter cuts the linger short.
	g, err := h.svc.Issue(ctx, tokens.IssueRequest{Subject: "reader", ClientID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if err := p.WaitFor(wctx, g.Seq); err != nil {
		t.Fatalf("waiting for seq %d (applied %d) while the projector lingers: %v", g.Seq, p.Applied(), err)
	}
}

// TestFillLingersUnlessSomeoneWaits drives fill directly: a busy batch
// lingers for more events while nobody waits, even after a caller gave up
// waiting, and ends at once, batch after batch, while a caller still waits
// for a sequence not yet applied.
func TestFillLingersUnlessSomeoneWaits(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, filepath.Join(t.TempDir(), "projections.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	p, err := NewProjector(ctx, db, nil, subjects, quiet)
	if err != nil {
		t.Fatal(err)
	}
	p.BatchSize, p.Linger = 5, time.Hour
	// fill only counts the messages, so nil ones do.
	filled := func(incoming chan jetstream.Msg) <-chan int {
		n := make(chan int, 1)
		go func() { n <- len(p.fill([]jetstream.Msg{nil}, incoming, true)) }()
		return n
	}
	// A minute tells a cut-short linger from one of an hour.
	within := func(n <-chan int) int {
		t.Helper()
		select {
		case got := <-n:
			return got
		case <-time.After(time.Minute):
			t.Fatal("fill lingered while a caller waited")
			return 0
		}
	}

	gaveUp, giveUp := context.WithCancel(ctx)
	giveUp()
	if err := p.WaitFor(gaveUp, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitFor with a canceled context: %v", err)
	}
	incoming := make(chan jetstream.Msg)
	n := filled(incoming)
	for range p.BatchSize - 1 {
		select {
		case incoming <- nil: // taken by the lingering fill
		case got := <-n:
			t.Fatalf("a caller that gave up cut a batch short at %d of %d events", got, p.BatchSize)
		}
	}
	if got := within(n); got != p.BatchSize {
		t.Fatalf("a full batch of %d events came back with %d", p.BatchSize, got)
	}

	waitCtx, stopWaiting := context.WithCancel(ctx)
	waited := make(chan error, 1)
	go func() { waited <- p.WaitFor(waitCtx, 1) }()
	// The first batch ends when the waiter arrives; the next ones, which do
	// not hold its sequence either, end at once too.
	for i := range 3 {
		if got := within(filled(make(chan jetstream.Msg))); got != 1 {
			t.Fatalf("batch %d with a caller waiting: %d events", i, got)
		}
	}
	stopWaiting()
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitFor: %v", err)
	}
}
