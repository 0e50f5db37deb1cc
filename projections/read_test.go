package projections

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/queries"
)

// auditRow is an audit row as the brute-force filters below see it.
type auditRow struct {
	seq                                 uint64
	typ, familyID, subject, clientID    string
	time                                time.Time
	maxTimeUpto, minTimeFrom, timeNanos int64
}

// auditFixture projects the seeded workload followed by events from two
// instances whose clocks differ, so event times go back and forth in seq,
// in small batches, so a late event's older time lowers the bounds of
// rows in earlier batches. It returns the reader and every row.
func auditFixture(t *testing.T) (*harness, *DB, *Reader, []auditRow) {
	t.Helper()
	h := MustHarness(t)
	h.workload(t, 5, 10)
	last := h.skew(t, 40)
	db := h.openDB(t, "projections.db")
	p := h.project(t, db, 7, last)
	rows, err := db.reader.Query("SELECT seq, type, time, family_id, subject, client_id, max_time_upto, min_time_from FROM audit_events ORDER BY seq")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var all []auditRow
	for rows.Next() {
		var r auditRow
		if err := rows.Scan(&r.seq, &r.typ, &r.timeNanos, &r.familyID, &r.subject, &r.clientID, &r.maxTimeUpto, &r.minTimeFrom); err != nil {
			t.Fatal(err)
		}
		r.time = unixNano(r.timeNanos)
		all = append(all, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return h, db, NewReader(db, p, h.clock), all
}

// skew issues n families as if from two instances whose clocks are 6 s
// apart, taking turns, and returns the last sequence.
func (h *harness) skew(tb testing.TB, n int) uint64 {
	tb.Helper()
	base := h.now
	defer func() { h.now = base }()
	var last uint64
	for i := range n {
		base = base.Add(500 * time.Millisecond)
		h.now = base.Add(time.Duration(1-2*(i%2)) * 3 * time.Second)
		g, err := h.svc.Issue(context.Background(), events.IssueRequest{Subject: fmt.Sprintf("user-%d", i%5),
			ClientID: fmt.Sprintf("client-%d", i%3)})
		if err != nil {
			tb.Fatal(err)
		}
		last = g.Seq
	}
	return last
}

type auditCase struct {
	name   string
	filter AuditFilter
	empty  bool // nothing matches, on purpose
}

// auditCases covers every route Reader.Audit can take (see auditRows).
func auditCases(all []auditRow) []auditCase {
	mid := all[len(all)/3].time
	late := all[len(all)*2/3].time
	skewed := all[len(all)-20].time // among the skewed events
	first, lastTime := all[0].time, all[0].time
	for _, r := range all {
		first, lastTime = minTime(first, r.time), maxTime(lastTime, r.time)
	}
	rare := []string{string(domain.ReplayDetected), string(domain.FamilyRevoked), string(domain.RefreshRejected)}
	return []auditCase{
		{name: "all"},
		{name: "rare types", filter: AuditFilter{Types: rare}},
		{name: "two rare types", filter: AuditFilter{Types: rare[1:]}},
		{name: "one rare type", filter: AuditFilter{Types: rare[1:2]}},
		{name: "one type twice", filter: AuditFilter{Types: []string{rare[0], rare[0]}}},
		{name: "common type", filter: AuditFilter{Types: []string{"token.rotated"}}},
		{name: "mixed types", filter: AuditFilter{Types: []string{"token.rotated", "family.revoked"}}},
		{name: "since", filter: AuditFilter{Since: mid}},
		{name: "until", filter: AuditFilter{Until: mid}},
		{name: "window", filter: AuditFilter{Since: mid, Until: late}},
		{name: "skewed window", filter: AuditFilter{Since: skewed, Until: skewed.Add(4 * time.Second)}},
		{name: "skewed since", filter: AuditFilter{Since: skewed}},
		{name: "skewed until", filter: AuditFilter{Until: skewed}},
		{name: "window, rare types", filter: AuditFilter{Since: mid, Until: late, Types: rare}},
		{name: "window, one type", filter: AuditFilter{Since: mid, Until: late, Types: []string{"token.rotated"}}},
		{name: "window, common", filter: AuditFilter{Since: mid, Until: late, Types: []string{"token.issued", "token.rotated"}}},
		{name: "subject", filter: AuditFilter{Subject: "user-1", Types: rare}},
		{name: "subject, client, window", filter: AuditFilter{Subject: "user-1", ClientID: "client-1", Since: mid}},
		{name: "client", filter: AuditFilter{ClientID: "client-2", Since: mid}},
		{name: "client, types", filter: AuditFilter{ClientID: "client-0", Types: []string{"token.rotated", "token.reused"}, Until: skewed}},
		{name: "family", filter: AuditFilter{FamilyID: all[0].familyID, Types: []string{"token.rotated"}, Until: late}},
		{name: "family, window", filter: AuditFilter{FamilyID: all[0].familyID, Since: first, Until: mid}},
		{name: "after everything", filter: AuditFilter{Since: lastTime.Add(time.Nanosecond)}, empty: true},
		{name: "before everything", filter: AuditFilter{Until: first}, empty: true},
		{name: "empty window", filter: AuditFilter{Since: mid, Until: mid.Add(time.Nanosecond), Types: []string{"no.such.type"}}, empty: true},
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func (f AuditFilter) matches(r auditRow) bool {
	return (f.FamilyID == "" || r.familyID == f.FamilyID) && (f.Subject == "" || r.subject == f.Subject) &&
		(f.ClientID == "" || r.clientID == f.ClientID) && (len(f.Types) == 0 || slices.Contains(f.Types, r.typ)) &&
		(f.Since.IsZero() || !r.time.Before(f.Since)) && (f.Until.IsZero() || r.time.Before(f.Until))
}

// TestAuditFiltersEveryPath pages through the audit trail with each filter
// combination (each takes its own query and index) and compares the result
// with the same filter applied to every row.
func TestAuditFiltersEveryPath(t *testing.T) {
	_, _, r, all := auditFixture(t)
	ctx := context.Background()
	if len(all) < 50 {
		t.Fatalf("only %d events", len(all))
	}
	for _, c := range auditCases(all) {
		f := c.filter
		var want []uint64
		for _, e := range all {
			if f.matches(e) {
				want = append(want, e.seq)
			}
		}
		if c.empty != (len(want) == 0) || len(want) == len(all) && c.name != "all" {
			t.Errorf("%s: %d of %d events match: the case tests nothing", c.name, len(want), len(all))
		}
		if c.name == "skewed window" && len(want) > 0 && int(want[len(want)-1]-want[0]+1) == len(want) {
			t.Errorf("%s: events %v are a seq range, so the window does not test skewed times", c.name, want)
		}
		var got []uint64
		f.Limit = 7
		for {
			page, err := r.Audit(ctx, f)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			if len(page.Events) == 0 {
				break
			}
			for _, e := range page.Events {
				got = append(got, e.Seq)
			}
			f.AfterSeq = page.NextAfterSeq
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: got %d events %v, want %d %v", c.name, len(got), got, len(want), want)
		}
	}
}

// TestAuditTimeBounds checks the bounds the projector keeps per row
// against their definition: the latest time up to the row and the
// earliest from it on, whatever batches the rows came in.
func TestAuditTimeBounds(t *testing.T) {
	_, _, _, all := auditFixture(t)
	upto, lowered := int64(math.MinInt64), 0
	for i, r := range all {
		upto = max(upto, r.timeNanos)
		from := r.timeNanos
		for _, later := range all[i:] {
			from = min(from, later.timeNanos)
		}
		if r.maxTimeUpto != upto || r.minTimeFrom != from {
			t.Fatalf("seq %d: bounds [%d, %d], want [%d, %d]", r.seq, r.minTimeFrom, r.maxTimeUpto, from, upto)
		}
		if from < r.timeNanos {
			lowered++
		}
	}
	if lowered == 0 {
		t.Fatal("no later event has an older time: the bounds are not tested")
	}
}

// TestAuditPagesReadSeqOrder runs EXPLAIN QUERY PLAN on every statement
// Reader.Audit issues for every route, with the arguments it passed: no
// page may sort or read the table other than as a range of seq.
func TestAuditPagesReadSeqOrder(t *testing.T) {
	_, db, r, all := auditFixture(t)
	ctx := context.Background()
	rec := &recordingDB{DB: db.reader}
	r.db = &DB{writer: db.writer, reader: db.reader, W: db.W, R: queries.New(rec)}
	for _, c := range auditCases(all) {
		f := c.filter
		f.Limit = 7
		for range 3 { // the first pages
			page, err := r.Audit(ctx, f)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			if len(page.Events) == 0 {
				break
			}
			f.AfterSeq = page.NextAfterSeq
		}
	}
	used := map[string]bool{}
	for _, call := range rec.calls {
		name := strings.Fields(call.query)[2] // "-- name: X :many"
		used[name] = true
		plan, err := db.reader.Query("EXPLAIN QUERY PLAN "+call.query, call.args...)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var lines []string
		for plan.Next() {
			var id, parent, unused int
			var detail string
			if err := plan.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			lines = append(lines, detail)
		}
		plan.Close()
		for _, d := range lines {
			bound := strings.Contains(d, "audit_by_max_time") || strings.Contains(d, "audit_by_min_time") // one index entry
			switch {
			case strings.Contains(d, "TEMP B-TREE"),
				strings.HasPrefix(d, "SCAN audit_events"),
				strings.HasPrefix(d, "SEARCH audit_events") && !strings.Contains(d, "seq>?") && !strings.Contains(d, "rowid>?") && !bound:
				t.Errorf("%s with %v does not read a seq range in order:\n%s", name, call.args, strings.Join(lines, "\n"))
			}
		}
	}
	for _, name := range []string{"AuditByFamily", "AuditBySubject", "AuditByClient", "AuditByType", "AuditByRareTypes",
		"AuditBySeq", "FirstSeqSince", "LastSeqBefore"} {
		if !used[name] {
			t.Errorf("no case takes %s", name)
		}
	}
}

// recordingDB records the statements run through it.
type recordingDB struct {
	*sql.DB
	calls []recordedCall
}

type recordedCall struct {
	query string
	args  []any
}

func (r *recordingDB) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	r.calls = append(r.calls, recordedCall{query, args})
	return r.DB.QueryContext(ctx, query, args...)
}

func (r *recordingDB) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	r.calls = append(r.calls, recordedCall{query, args})
	return r.DB.QueryRowContext(ctx, query, args...)
}

// TestAuditPagesBoundedByBytes: with events carrying large contexts, a page
// ends before the event that would take it over its byte budget, holds one
// event even if that alone is over, reads about as many rows as it
// returns, and next_after_seq pages through every event.
func TestAuditPagesBoundedByBytes(t *testing.T) {
	h := MustHarness(t)
	ctx := context.Background()
	big := domain.Context{"a": strings.Repeat("x", domain.MaxContextValue), "b": strings.Repeat("x", domain.MaxContextBytes-domain.MaxContextValue-2)}
	var want []uint64
	for i := range 30 {
		g, err := h.svc.Issue(ctx, events.IssueRequest{Subject: fmt.Sprintf("user-%d", i%2), ClientID: "c", Context: big})
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, g.Seq)
	}
	db := h.openDB(t, "projections.db")
	r := NewReader(db, h.project(t, db, 100, want[len(want)-1]), h.clock)
	rec := &recordingDB{DB: db.reader}
	r.db = &DB{writer: db.writer, reader: db.reader, W: db.W, R: queries.New(rec)}
	size := func(e AuditEvent) int { return len(e.Context) + 200 }

	for _, budget := range []int{8 << 10, 1} {
		f := AuditFilter{Subject: "user-1", Limit: 1000, MaxBytes: budget, Size: size}
		var pages [][]AuditEvent
		for {
			rec.calls = nil
			page, err := r.Audit(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			if len(page.Events) == 0 {
				break
			}
			read := 0
			for _, c := range rec.calls {
				read += int(c.args[len(c.args)-1].(int64)) // every page query's last argument is its limit
			}
			if read > len(page.Events)+auditChunk {
				t.Errorf("budget %d: read up to %d rows for a page of %d", budget, read, len(page.Events))
			}
			pages = append(pages, page.Events)
			f.AfterSeq = page.NextAfterSeq
		}
		var got []uint64
		for i, p := range pages {
			total := 0
			for _, e := range p {
				total += size(e)
				got = append(got, e.Seq)
			}
			if total > budget && len(p) > 1 {
				t.Errorf("budget %d: page %d of %d events holds %d bytes", budget, i, len(p), total)
			}
			if i+1 < len(pages) && total+size(pages[i+1][0]) <= budget {
				t.Errorf("budget %d: page %d ends at %d bytes though the next event fits", budget, i, total)
			}
		}
		var wantHere []uint64
		for i, seq := range want {
			if i%2 == 1 {
				wantHere = append(wantHere, seq)
			}
		}
		if !slices.Equal(got, wantHere) {
			t.Errorf("budget %d: paged %v, want %v", budget, got, wantHere)
		}
		if len(pages) < 2 {
			t.Errorf("budget %d: %d page(s): the budget cut nothing", budget, len(pages))
		}
	}
}
