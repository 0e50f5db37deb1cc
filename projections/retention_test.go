package projections

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/tokens"
)

// TestReadModelFollowsRetention: the read model drops the rows of events
// the stream dropped (their TTL ran out) and keeps the family.archived
// summaries, as a rebuild from the stream would; once the summaries' own
// TTL is over, nothing of the families is left.
func TestReadModelFollowsRetention(t *testing.T) {
	h := MustHarness(t)
	ctx := context.Background()
	stream, err := h.js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	store := events.NewStore(h.nc, h.js, stream, subjects)
	// The history goes 3 s after it was stored (1 s past a 2 s absolute
	// expiry), the summaries an hour after.
	store.Retention = events.Retention{AfterExpiry: time.Second, Archive: time.Hour}
	codec, _ := keys.NewKeyset(time.Now()).Codec()
	// Real time: the server drops messages by its own clock.
	h.now = time.Now()
	svc := tokens.NewService(events.NewWriter(store, 64), codec,
		domain.Policy{ReuseInterval: time.Second, IdleTTL: 2 * time.Second, AbsoluteTTL: 2 * time.Second}, h.clock)

	a, err := svc.Issue(ctx, tokens.IssueRequest{Subject: "kept", ClientID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Refresh(ctx, tokens.RefreshRequest{Token: a.Token.Value(), ClientID: "c"}); err != nil {
		t.Fatal(err)
	}
	b, err := svc.Issue(ctx, tokens.IssueRequest{Subject: "revoked", ClientID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := svc.RevokeFamily(ctx, b.Family.ID, "user_disabled", nil); err != nil {
		t.Fatal(err)
	}
	h.now = a.Family.AbsoluteExpiresAt.Add(time.Millisecond)
	var last uint64
	for _, id := range []string{a.Family.ID, b.Family.ID} {
		if ok, err := svc.Archive(ctx, id); !ok || err != nil {
			t.Fatalf("archive %s: %v %v", id, ok, err)
		}
	}
	if last, err = events.LastEventSeq(ctx, stream, subjects); err != nil {
		t.Fatal(err)
	}

	db := h.openDB(t, "projections.db")
	p := h.project(t, db, 100, last)
	archived, err := NewReader(db, p, time.Now).Family(ctx, a.Family.ID)
	if err != nil || archived.ArchivedAt == nil {
		t.Fatalf("family view of an archived family: %+v %v", archived, err)
	}

	storedTypes := func() []string {
		var out []string
		for _, e := range h.streamEvents(t) {
			out = append(out, e.env.Type)
		}
		return out
	}
	sameAsRebuild := func(step string) {
		t.Helper()
		fresh := h.openDB(t, fmt.Sprintf("rebuild-%s.db", step))
		seq, _ := events.LastEventSeq(ctx, stream, subjects)
		if seq > 0 {
			h.project(t, fresh, 100, seq)
		}
		got, want := dump(t, db), dump(t, fresh)
		for _, table := range []string{"families"} {
			if !slices.Equal(got[table], want[table]) {
				t.Fatalf("%s: %s differ from a rebuild:\n%v\nrebuilt:\n%v", step, table, got[table], want[table])
			}
		}
		if g, w := auditSeqs(t, db), auditSeqs(t, fresh); !slices.Equal(g, w) {
			t.Fatalf("%s: audit rows %v, a rebuild has %v", step, g, w)
		}
	}

	eventstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if got := storedTypes(); !slices.Equal(got, []string{"family.archived", "family.archived"}) {
			return fmt.Errorf("stream holds %v", got)
		}
		return nil
	})
	if _, err := p.Prune(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	sameAsRebuild("history-gone")
	if n := len(auditSeqs(t, db)); n != 2 {
		t.Fatalf("%d audit rows left, want the two summaries", n)
	}

	if _, err := p.Prune(ctx, time.Now().Add(time.Hour+time.Minute)); err != nil {
		t.Fatal(err)
	}
	if rows := dump(t, db); len(rows["families"])+len(rows["audit_events"]) != 0 {
		t.Fatalf("rows left after the summaries' TTL: %v", rows)
	}
}

// TestPruneDatesRowsFromBeforeRetention: rows projected from events stored
// without a TTL (by earlier versions) are dropped when the stream's MaxAge
// drops those events.
func TestPruneDatesRowsFromBeforeRetention(t *testing.T) {
	h := MustHarness(t)
	ctx := context.Background()
	last := h.workload(t, 7, 4)
	db := h.openDB(t, "projections.db")
	p := h.project(t, db, 100, last)
	before := len(auditSeqs(t, db))

	p.MaxAge = time.Hour
	if n, err := p.Prune(ctx, time.Now()); err != nil || n != 0 {
		t.Fatalf("pruned %d rows younger than MaxAge: %v", n, err)
	}
	if got := len(auditSeqs(t, db)); got != before {
		t.Fatalf("%d audit rows left of %d", got, before)
	}
	// An hour after the latest of them (the workload's clock runs ahead of
	// the wall clock), every event is gone from the stream.
	var latest int64
	if err := db.reader.QueryRow("SELECT max(time) FROM audit_events").Scan(&latest); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Prune(ctx, time.Unix(0, latest).Add(time.Hour+time.Minute)); err != nil {
		t.Fatal(err)
	}
	if rows := dump(t, db); len(rows["audit_events"])+len(rows["families"]) != 0 {
		t.Fatalf("rows left past MaxAge: %d events, %d families", len(rows["audit_events"]), len(rows["families"]))
	}
}

func auditSeqs(tb testing.TB, db *DB) []int64 {
	return column[int64](tb, db, "SELECT seq FROM audit_events ORDER BY seq")
}

// TestPruneKeepsFamiliesWithTheirEvents prunes at every expiry the read
// model holds (and just before it): each prune drops exactly the audit
// rows expired by then, and a family row stays while any audit row of it
// does. A refusal recorded after a family's summary expires first; the
// summary next; the history last.
func TestPruneKeepsFamiliesWithTheirEvents(t *testing.T) {
	h := MustHarness(t)
	ctx := context.Background()
	h.withRetention(events.Retention{AfterExpiry: time.Hour, Archive: 2 * time.Hour})
	svc := h.svc

	var presented []string
	var ids []string
	for i := range 3 {
		g, err := svc.Issue(ctx, tokens.IssueRequest{Subject: fmt.Sprintf("user-%d", i), ClientID: "c"})
		if err != nil {
			t.Fatal(err)
		}
		ids, presented = append(ids, g.Family.ID), append(presented, g.Token.Value())
		for range 3 * i {
			if g, err = svc.Refresh(ctx, tokens.RefreshRequest{Token: g.Token.Value(), ClientID: "c"}); err != nil {
				t.Fatal(err)
			}
		}
		if i == 1 {
			if _, _, err := svc.RevokeFamily(ctx, g.Family.ID, "user_disabled", nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	h.now = h.now.Add(25 * time.Hour)
	for _, id := range ids[:2] {
		if ok, err := svc.Archive(ctx, id); !ok || err != nil {
			t.Fatalf("archive %s: %v %v", id, ok, err)
		}
	}
	if _, err := svc.Refresh(ctx, tokens.RefreshRequest{Token: presented[0], ClientID: "c"}); err == nil {
		t.Fatal("a token of an archived family was refreshed")
	}
	last, err := events.LastEventSeq(ctx, h.stream, subjects)
	if err != nil {
		t.Fatal(err)
	}
	db := h.openDB(t, "projections.db")
	p := h.project(t, db, 4, last)

	type row struct {
		family    string
		expiresAt int64
	}
	rows := func() map[int64]row {
		out := map[int64]row{}
		r, err := db.reader.Query("SELECT seq, family_id, expires_at FROM audit_events")
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		for r.Next() {
			var seq int64
			var x row
			if err := r.Scan(&seq, &x.family, &x.expiresAt); err != nil {
				t.Fatal(err)
			}
			out[seq] = x
		}
		return out
	}
	before := rows()
	var expiries []int64
	for _, r := range before {
		expiries = append(expiries, r.expiresAt)
	}
	slices.Sort(expiries)
	expiries = slices.Compact(expiries)
	if len(expiries) < 3 {
		t.Fatalf("audit rows expire at %v: the refusal, summaries and history should differ", expiries)
	}
	for _, at := range expiries {
		for _, now := range []int64{at - 1, at} {
			if _, err := p.Prune(ctx, time.Unix(0, now)); err != nil {
				t.Fatal(err)
			}
			after := rows()
			var withRows []string
			for seq, r := range before {
				_, kept := after[seq]
				if kept != (r.expiresAt > now) {
					t.Fatalf("prune at %d: row %d expiring at %d kept: %v", now, seq, r.expiresAt, kept)
				}
				if kept {
					withRows = append(withRows, r.family)
				}
			}
			slices.Sort(withRows)
			if got, want := familyIDs(t, db), slices.Compact(withRows); !slices.Equal(got, want) {
				t.Fatalf("prune at %d: family rows %v, families with audit rows %v", now, got, want)
			}
		}
	}
	if rows := dump(t, db); len(rows["families"])+len(rows["audit_events"]) != 0 {
		t.Fatalf("rows left after every expiry: %v", rows)
	}
}

func familyIDs(tb testing.TB, db *DB) []string {
	return column[string](tb, db, "SELECT family_id FROM families ORDER BY family_id")
}

// column returns the one column query selects, row by row.
func column[T any](tb testing.TB, db *DB, query string) []T {
	tb.Helper()
	rows, err := db.reader.Query(query)
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		var v T
		if err := rows.Scan(&v); err != nil {
			tb.Fatal(err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}
