package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/queries"
	"github.com/tokend/tokend/tokens"
)

// auditRow is an audit row as the brute-force filters below see it.
type auditRow struct {
	seq                                           uint64
	typ, familyID, subject, clientID, presentedBy string
	time                                          time.Time
	maxTimeUpto, minTimeFrom, timeNanos           int64
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
	rows, err := db.reader.Query(`SELECT seq, type, time, family_id, subject, client_id, presented_by, max_time_upto, min_time_from
		FROM audit_events ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var all []auditRow
	for rows.Next() {
		var r auditRow
		if err := rows.Scan(&r.seq, &r.typ, &r.timeNanos, &r.familyID, &r.subject, &r.clientID, &r.presentedBy, &r.maxTimeUpto,
			&r.minTimeFrom); err != nil {
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
		g, err := h.svc.Issue(context.Background(), tokens.IssueRequest{Subject: fmt.Sprintf("user-%d", i%5),
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
	rare := []string{string(domain.ReplayDetected), string(domain.KeyMismatch), string(domain.FamilyRevoked), string(domain.RefreshRejected)}
	var presented auditRow // the first event with a presenter
	for _, r := range all {
		if r.presentedBy != "" {
			presented = r
			break
		}
	}
	return []auditCase{
		{name: "all"},
		{name: "rare types", filter: AuditFilter{Types: rare}},
		{name: "two rare types", filter: AuditFilter{Types: rare[2:]}},
		{name: "one rare type", filter: AuditFilter{Types: rare[2:3]}},
		{name: "key mismatches", filter: AuditFilter{Types: rare[1:2]}},
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
		{name: "presenter", filter: AuditFilter{PresentedBy: "intruder-0"}},
		{name: "presenter, type", filter: AuditFilter{PresentedBy: "intruder-1", Types: rare}},
		{name: "presenter, window", filter: AuditFilter{PresentedBy: "intruder-0", Since: presented.time.Add(time.Nanosecond), Until: late}},
		{name: "presenter, owner", filter: AuditFilter{PresentedBy: "intruder-1", ClientID: presented.clientID}},
		{name: "presenter, subject", filter: AuditFilter{PresentedBy: "intruder-0", Subject: presented.subject}},
		{name: "family, presenter", filter: AuditFilter{FamilyID: presented.familyID, PresentedBy: presented.presentedBy}},
		{name: "presenter of no event", filter: AuditFilter{PresentedBy: "client-0"}, empty: true},
		{name: "presenter, other type", filter: AuditFilter{PresentedBy: "intruder-0", Types: []string{"token.rotated"}}, empty: true},
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
		(f.ClientID == "" || r.clientID == f.ClientID) && (f.PresentedBy == "" || r.presentedBy == f.PresentedBy) &&
		(len(f.Types) == 0 || slices.Contains(f.Types, r.typ)) &&
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
	routes := map[string][]string{} // case: the statements it ran
	for _, c := range auditCases(all) {
		f := c.filter
		f.Limit = 7
		from := len(rec.calls)
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
		for _, call := range rec.calls[from:] {
			routes[c.name] = append(routes[c.name], strings.Fields(call.query)[2])
		}
	}
	// audit_by_type leaves token.rotated out: the table holds a page of it.
	if got := routes["common type"]; len(got) == 0 || slices.ContainsFunc(got, func(n string) bool { return n != "AuditBySeq" }) {
		t.Errorf("token.rotated alone read by %v, want AuditBySeq", got)
	}
	used := map[string]bool{}
	for _, call := range rec.calls {
		name := strings.Fields(call.query)[2] // "-- name: X :many"
		used[name] = true
		plan := explain(t, db, call.query, call.args...)
		if bad := planProblems(name, plan); len(bad) > 0 {
			t.Errorf("%s with %v does not read a seq range in order (%q):\n%s", name, call.args, bad, strings.Join(plan, "\n"))
		}
		// The partial index, searched by presenter: not the table, not
		// another index filtered by presenter.
		if name == "AuditByPresenter" && !slices.ContainsFunc(plan, func(d string) bool {
			return strings.HasPrefix(d, "SEARCH audit_events USING INDEX audit_by_presenter (presented_by=? AND seq>?")
		}) {
			t.Errorf("%s with %v does not search audit_by_presenter:\n%s", name, call.args, strings.Join(plan, "\n"))
		}
	}
	for _, name := range []string{"AuditByFamily", "AuditByPresenter", "AuditBySubject", "AuditByClient", "AuditByType",
		"AuditByRareTypes", "AuditBySeq", "FirstSeqSince", "LastSeqBefore"} {
		if !used[name] {
			t.Errorf("no case takes %s", name)
		}
	}

	// The check itself tells such plans from others.
	for _, c := range []struct{ name, query string }{
		{"AuditBySort", "SELECT * FROM audit_events INDEXED BY audit_by_family WHERE family_id = 'f' AND seq > 0 ORDER BY time LIMIT 7"},
		{"AuditByScan", "SELECT * FROM audit_events NOT INDEXED WHERE time > 0 LIMIT 7"},
		{"AuditFromStart", "SELECT * FROM audit_events INDEXED BY audit_by_subject WHERE subject = 's' ORDER BY seq LIMIT 7"},
		{"FirstSeqByScan", "SELECT seq FROM audit_events WHERE max_time_upto >= 5 ORDER BY seq LIMIT 1"},
		{"LastSeqByIndex", "SELECT seq FROM audit_events INDEXED BY audit_by_subject WHERE subject = 's' ORDER BY seq DESC LIMIT 1"},
	} {
		if plan := explain(t, db, c.query); len(planProblems(c.name, plan)) == 0 {
			t.Errorf("%s passes the check:\n%s", c.name, strings.Join(plan, "\n"))
		}
	}
}

// planProblems returns the lines of an audit read's query plan that read
// more than it returns: a sort (temp B-tree), a scan of a table, or, for a
// page (Audit*), an index search without a lower seq bound, which reads
// from the index's start. The binary searches of the time bounds may scan
// only their CTE (search) and look rows up by rowid or the table's first
// or last rowid (a bare SEARCH).
func planProblems(name string, plan []string) []string {
	var bad []string
	for _, d := range plan {
		f := strings.Fields(d)
		ok := true
		switch {
		case strings.Contains(d, "TEMP B-TREE"):
			ok = false
		case f[0] == "SCAN":
			ok = f[1] == "json_each" || f[1] == "search" || d == "SCAN CONSTANT ROW"
		case f[0] == "SEARCH" && strings.HasPrefix(name, "Audit"):
			ok = strings.Contains(d, "seq>?") || strings.Contains(d, "rowid>?")
		case f[0] == "SEARCH":
			ok = len(f) == 2 || strings.Contains(d, "USING INTEGER PRIMARY KEY")
		}
		if !ok {
			bad = append(bad, d)
		}
	}
	return bad
}

// explain returns the detail lines of a query's plan.
func explain(tb testing.TB, db *DB, query string, args ...any) []string {
	tb.Helper()
	plan, err := db.reader.Query("EXPLAIN QUERY PLAN "+query, args...)
	if err != nil {
		tb.Fatalf("%s: %v", query, err)
	}
	defer plan.Close()
	var lines []string
	for plan.Next() {
		var id, parent, unused int
		var detail string
		if err := plan.Scan(&id, &parent, &unused, &detail); err != nil {
			tb.Fatal(err)
		}
		lines = append(lines, detail)
	}
	return lines
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
		g, err := h.svc.Issue(ctx, tokens.IssueRequest{Subject: fmt.Sprintf("user-%d", i%2), ClientID: "c", Context: big})
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

// TestTimeBoundSearchesSkipGaps: the binary searches over seq find the same
// rows as a look at every row, with gaps in seq (pruned rows, skipped
// messages) and times that go back and forth.
func TestTimeBoundSearchesSkipGaps(t *testing.T) {
	db, err := Open(context.Background(), filepath.Join(t.TempDir(), "projections.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	seqs := []int64{3, 4, 9, 10, 11, 30, 31, 64, 65, 100, 257, 258, 1000}
	times := []int64{50, 40, 60, 55, 70, 65, 90, 80, 85, 120, 100, 130, 125}
	upto, from := make([]int64, len(seqs)), make([]int64, len(seqs))
	for i := range seqs {
		upto[i], from[i] = slices.Max(times[:i+1]), slices.Min(times[i:])
		if _, err := db.writer.Exec(`INSERT INTO audit_events (seq, id, type, time, family_id, subject, client_id, generation,
			reason, context, max_time_upto, min_time_from) VALUES (?, ?, 'token.issued', ?, 'f', 's', 'c', 1, '', '{}', ?, ?)`,
			seqs[i], fmt.Sprint(i), times[i], upto[i], from[i]); err != nil {
			t.Fatal(err)
		}
	}
	// want returns the seq of the first (or last) row for which ok holds, 0 if none.
	want := func(last bool, ok func(i int) bool) int64 {
		var got int64
		for i := range seqs {
			if ok(i) && (last || got == 0) {
				got = seqs[i]
			}
		}
		return got
	}
	found := func(seq int64, err error) int64 {
		t.Helper()
		if errors.Is(err, sql.ErrNoRows) {
			return 0
		}
		if err != nil {
			t.Fatal(err)
		}
		return seq
	}
	for at := int64(35); at <= 135; at++ {
		if got, w := found(db.R.FirstSeqSince(ctx, at)), want(false, func(i int) bool { return upto[i] >= at }); got != w {
			t.Errorf("FirstSeqSince(%d) = %d, want %d", at, got, w)
		}
		if got, w := found(db.R.LastSeqBefore(ctx, at)), want(true, func(i int) bool { return from[i] < at }); got != w {
			t.Errorf("LastSeqBefore(%d) = %d, want %d", at, got, w)
		}
		for _, before := range []int64{1, 4, 10, 12, 64, 258, 1000, 1001} {
			got := found(db.R.FirstMinTimeFromAfter(ctx, queries.FirstMinTimeFromAfterParams{Time: at, Seq: before}))
			if w := want(false, func(i int) bool { return seqs[i] < before && from[i] > at }); got != w {
				t.Errorf("FirstMinTimeFromAfter(%d, before %d) = %d, want %d", at, before, got, w)
			}
		}
	}
}

// TestAuditNamesThePresenter: the audit trail says which client presented
// another client's token, from where, and which generation a replayed
// token was, beside the owner and the family's generation.
func TestAuditNamesThePresenter(t *testing.T) {
	h := MustHarness(t)
	ctx := context.Background()
	g, err := h.svc.Issue(ctx, tokens.IssueRequest{Subject: "user-1", ClientID: "web-app", Context: domain.Context{"ip": "203.0.113.7"}})
	if err != nil {
		t.Fatal(err)
	}
	first := g.Token.Value()
	foreign := domain.Context{"ip": "2001:db8::7", "user_agent": "evil/1.0"}
	if _, err := h.svc.Refresh(ctx, tokens.RefreshRequest{Token: first, ClientID: "evil-app", Context: foreign}); !errors.Is(err, domain.ErrInvalidGrant) {
		t.Fatalf("foreign refresh: %v", err)
	}
	if _, err := h.svc.Refresh(ctx, tokens.RefreshRequest{Token: first, ClientID: "web-app"}); err != nil {
		t.Fatal(err)
	}
	h.now = h.now.Add(time.Minute) // past the reuse interval
	_, err = h.svc.Refresh(ctx, tokens.RefreshRequest{Token: first, ClientID: "web-app", Context: domain.Context{"ip": "198.51.100.9"}})
	if !errors.Is(err, domain.ErrInvalidGrant) {
		t.Fatalf("replay: %v", err)
	}
	db := h.openDB(t, "projections.db")
	p := h.project(t, db, 10, lastSeq(t, h))
	page, err := NewReader(db, p, h.clock).Audit(ctx, AuditFilter{FamilyID: g.Family.ID, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		typ, reason, clientID, presentedBy string
		generation, presentedGeneration    uint64
		context                            string
	}
	var got []row
	for _, e := range page.Events {
		got = append(got, row{e.Type, e.Reason, e.ClientID, e.PresentedBy, e.Generation, e.PresentedGeneration, string(e.Context)})
	}
	want := []row{
		{"token.issued", "", "web-app", "", 1, 0, `{"ip":"203.0.113.7"}`},
		{"refresh.rejected", "client_mismatch", "web-app", "evil-app", 1, 1, `{"ip":"2001:db8::7","user_agent":"evil/1.0"}`},
		{"token.rotated", "", "web-app", "", 2, 0, `{}`},
		{"token.replay_detected", "", "web-app", "", 2, 1, `{"ip":"198.51.100.9"}`},
		{"family.revoked", "replay_detected", "web-app", "", 2, 0, `{"ip":"198.51.100.9"}`},
	}
	if !slices.Equal(got, want) {
		t.Errorf("audit:\n%+v\nwant\n%+v", got, want)
	}
}

// lastSeq is the stream's last sequence.
func lastSeq(tb testing.TB, h *harness) uint64 {
	tb.Helper()
	info, err := h.stream.Info(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return info.State.LastSeq
}

// TestMigrationKeepsRowsWithoutPresenter: migration 0008 leaves the rows a
// read model holds as they were, with no presenter, which is what their
// events say.
func TestMigrationKeepsRowsWithoutPresenter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "projections.db")
	old := migratedTo(t, path, 6)
	if _, err := old.Exec(`INSERT INTO audit_events (seq, id, type, time, family_id, subject, client_id, generation, reason,
		context, max_time_upto, min_time_from) VALUES (1, 'e1', 'refresh.rejected', 10, 'f', 's', 'c', 2, 'client_mismatch', '{}', 10, 10)`); err != nil {
		t.Fatal(err)
	}
	db := mustUpgrade(t, old, path)
	page, err := (&Reader{db: db, p: &Projector{}}).Audit(context.Background(), AuditFilter{FamilyID: "f", Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Events) != 1 || page.Events[0].PresentedBy != "" || page.Events[0].PresentedGeneration != 0 ||
		page.Events[0].Reason != "client_mismatch" || page.Events[0].Generation != 2 {
		t.Fatalf("after the migration: %+v", page.Events)
	}
}

// TestMigrationIndexesPresenters: migration 0010 indexes the presenters of
// the rows a read model already holds, and only the rows that have one, so
// that an event without a presenter costs no write to it.
func TestMigrationIndexesPresenters(t *testing.T) {
	path := filepath.Join(t.TempDir(), "projections.db")
	old := migratedTo(t, path, 9)
	for seq, presenter := range []string{"", "evil-app", "", "evil-app", "other-app"} {
		if _, err := old.Exec(`INSERT INTO audit_events (seq, id, type, time, family_id, subject, client_id, generation, reason,
			context, max_time_upto, min_time_from, presented_by) VALUES (?, ?, 'refresh.rejected', 10, 'f', 's', 'web-app', 1,
			'client_mismatch', '{}', 10, 10, ?)`, seq+1, fmt.Sprint("e", seq), presenter); err != nil {
			t.Fatal(err)
		}
	}
	db := mustUpgrade(t, old, path)
	var partial bool
	if err := db.reader.QueryRow(`SELECT partial FROM pragma_index_list('audit_events') WHERE name = 'audit_by_presenter'`).
		Scan(&partial); err != nil || !partial {
		t.Fatalf("audit_by_presenter: partial %v, %v", partial, err)
	}
	var indexed int
	if err := db.reader.QueryRow(`SELECT count(*) FROM audit_events INDEXED BY audit_by_presenter WHERE presented_by <> ''`).
		Scan(&indexed); err != nil || indexed != 3 {
		t.Fatalf("%d rows in audit_by_presenter, want the 3 with a presenter (%v)", indexed, err)
	}
	page, err := (&Reader{db: db, p: &Projector{}}).Audit(context.Background(), AuditFilter{PresentedBy: "evil-app", Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Events) != 2 || page.Events[0].Seq != 2 || page.Events[1].Seq != 4 || page.Events[0].ClientID != "web-app" {
		t.Fatalf("presented by evil-app: %+v", page.Events)
	}
}
