package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
)

// The read side: queries with min_seq, audit paging and filters, revocation
// by subject or client, the HTTP API and readiness.

// mustQuery sends a query and decodes its successful reply into T.
func mustQuery[T any](tb testing.TB, nc *nats.Conn, subject string, req any) T {
	tb.Helper()
	r := call(tb, nc, subject, req)
	if r.errCode != "" {
		tb.Fatalf("%s: %s (code %s)", subject, r.raw, r.errCode)
	}
	var out T
	if err := json.Unmarshal(r.raw, &out); err != nil {
		tb.Fatalf("%s reply %q: %v", subject, r.raw, err)
	}
	return out
}

// httpGet sends GET path to app: the audit API (/v1/) on its audit
// listener, as an authenticated caller, anything else on --http.
func httpGet(tb testing.TB, app *App, path string) (int, http.Header, []byte) {
	tb.Helper()
	if strings.HasPrefix(path, "/v1/") {
		return auditGet(tb, auditClient(nil), app, path, testAuditToken)
	}
	resp, err := http.Get("http://" + app.HTTPAddr() + path)
	if err != nil {
		tb.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, resp.Header, body
}

func status(t *testing.T, app *App, path string) int {
	t.Helper()
	code, _, _ := httpGet(t, app, path)
	return code
}

// wantHTTPError checks a contract error answer over HTTP.
func wantHTTPError(tb testing.TB, path string, status int, header http.Header, body []byte, wantStatus int, code string) {
	tb.Helper()
	var e wire.ErrorReply
	if err := json.Unmarshal(body, &e); err != nil || status != wantStatus || e.Error != code || e.Description == "" ||
		!strings.HasPrefix(header.Get("Content-Type"), "application/json") {
		tb.Fatalf("GET %s: %d %q (%s), want %d with error %s", path, status, body, header.Get("Content-Type"), wantStatus, code)
	}
}

// pauseProjector stops an app's projector; the write side keeps working.
func pauseProjector(a *App) {
	a.stopProjector()
	<-a.projectorDone
}

// resumeProjector restarts a paused projector the way Start runs it.
func resumeProjector(a *App) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	a.stopProjector, a.projectorDone = cancel, done
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if err := a.projector.Run(ctx); err != nil && ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
}

func intp(n int) *int { return &n }

// auditPages pages through query.audit with limit k until an empty page and
// checks the paging contract on the way.
func auditPages(tb testing.TB, nc *nats.Conn, filter wire.AuditRequest, k int) []wire.AuditEvent {
	tb.Helper()
	var all []wire.AuditEvent
	filter.Limit, filter.AfterSeq = intp(k), 0
	for pages := 0; ; pages++ {
		if pages > 10000 {
			tb.Fatal("paging does not end")
		}
		page := mustQuery[wire.AuditPage](tb, nc, "tokens.query.audit", filter)
		if len(page.Events) == 0 {
			if page.NextAfterSeq != 0 {
				tb.Fatalf("empty page with next_after_seq %d", page.NextAfterSeq)
			}
			return all
		}
		if len(page.Events) > k {
			tb.Fatalf("limit %d returned %d events", k, len(page.Events))
		}
		for _, e := range page.Events {
			if e.Seq <= filter.AfterSeq {
				tb.Fatalf("limit %d: seq %d after cursor %d: not strictly ascending", k, e.Seq, filter.AfterSeq)
			}
			filter.AfterSeq = e.Seq
		}
		if page.NextAfterSeq != filter.AfterSeq {
			tb.Fatalf("next_after_seq %d, last event's seq %d", page.NextAfterSeq, filter.AfterSeq)
		}
		all = append(all, page.Events...)
	}
}

func seqsOf(evs []wire.AuditEvent) []uint64 {
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.Seq
	}
	return out
}

func TestMinSeqReadYourWrites(t *testing.T) {
	app := MustApp(t, testConfig(t), nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	f := mustIssue(t, nc, "ryw-user", "web-app")

	check := func(t *testing.T, parent, child wire.TokenReply, generation uint64) {
		t.Helper()
		fam := mustQuery[wire.FamilyView](t, nc, "tokens.query.family", wire.FamilyRequest{FamilyID: f.FamilyID, MinSeq: child.Seq})
		if fam.AsOfSeq < child.Seq || fam.Generation != generation || fam.Status != "active" || len(fam.Tokens) != int(generation) {
			t.Fatalf("family after seq %d: as_of %d generation %d status %s tokens %d; want generation %d",
				child.Seq, fam.AsOfSeq, fam.Generation, fam.Status, len(fam.Tokens), generation)
		}
		last := fam.Tokens[len(fam.Tokens)-1]
		if last.Generation != generation || last.Status != "active" || last.RotatedAt != nil {
			t.Fatalf("newest token %+v", last)
		}
		for _, tok := range fam.Tokens[:len(fam.Tokens)-1] {
			if tok.Status != "rotated" || tok.RotatedAt == nil {
				t.Fatalf("older token %+v, want rotated", tok)
			}
		}

		now := mustQuery[wire.Introspection](t, nc, "tokens.query.introspect", wire.IntrospectRequest{RefreshToken: child.RefreshToken, MinSeq: child.Seq})
		if !now.Active || now.FamilyID != f.FamilyID || now.Sub != "ryw-user" || now.ClientID != "web-app" ||
			now.TokenType != "refresh_token" || now.AsOfSeq < child.Seq {
			t.Fatalf("introspect of the new token right after seq %d: %+v", child.Seq, now)
		}
		old := mustQuery[wire.Introspection](t, nc, "tokens.query.introspect", wire.IntrospectRequest{RefreshToken: parent.RefreshToken, MinSeq: child.Seq})
		if old.Active || old.AsOfSeq < child.Seq {
			t.Fatalf("introspect of the rotated parent right after seq %d: %+v", child.Seq, old)
		}

		page := mustQuery[wire.AuditPage](t, nc, "tokens.query.audit", wire.AuditRequest{FamilyID: f.FamilyID, Limit: intp(1000), MinSeq: child.Seq})
		n := len(page.Events)
		if page.AsOfSeq < child.Seq || n == 0 {
			t.Fatalf("audit after seq %d: as_of %d, %d events", child.Seq, page.AsOfSeq, n)
		}
		if e := page.Events[n-1]; e.Seq != child.Seq || e.Type != "token.rotated" || e.Generation != generation {
			t.Fatalf("newest audit event %+v, want token.rotated seq %d generation %d", e, child.Seq, generation)
		}
	}

	// Back to back: every query right after the reply sees the write.
	parent := f
	for gen := uint64(2); gen <= 11; gen++ {
		child := mustRefresh(t, nc, parent.RefreshToken, "web-app")
		check(t, parent, child, gen)
		parent = child
	}

	// With the projector paused the query must wait for min_seq, not answer
	// from the stale read model, and answer once the write is applied.
	pauseProjector(app)
	child := mustRefresh(t, nc, parent.RefreshToken, "web-app")
	req, _ := json.Marshal(wire.FamilyRequest{FamilyID: f.FamilyID, MinSeq: child.Seq})
	stale, err := nc.Request("tokens.query.family", req, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code := stale.Header.Get("Nats-Service-Error-Code"); code != "503" {
		t.Fatalf("min_seq ahead of a paused projector: %q (code %q), want 503", stale.Data, code)
	}
	answered := make(chan *nats.Msg, 1)
	go func() {
		m, err := nc.Request("tokens.query.family", req, 10*time.Second)
		if err != nil {
			m = &nats.Msg{Data: []byte(err.Error())}
		}
		answered <- m
	}()
	time.Sleep(300 * time.Millisecond)
	resumeProjector(app)
	m := <-answered
	var fam wire.FamilyView
	if m.Header.Get("Nats-Service-Error-Code") != "" || json.Unmarshal(m.Data, &fam) != nil || fam.Generation != 12 || fam.AsOfSeq < child.Seq {
		t.Fatalf("query waiting for min_seq %d across a projector restart: %q", child.Seq, m.Data)
	}
	check(t, parent, child, 12)

	// min_seq the stream will not reach soon: temporarily_unavailable after
	// the wait, over NATS and HTTP. Sent all at once, as each waits 2 s.
	far := child.Seq + 1_000_000
	type answer struct {
		what, code string
		body       []byte
		err        error
	}
	var asks []func() answer
	for _, c := range []struct {
		subject string
		req     any
	}{
		{"tokens.query.family", wire.FamilyRequest{FamilyID: f.FamilyID, MinSeq: far}},
		{"tokens.query.introspect", wire.IntrospectRequest{RefreshToken: child.RefreshToken, MinSeq: far}},
		{"tokens.query.audit", wire.AuditRequest{FamilyID: f.FamilyID, MinSeq: far}},
	} {
		data, _ := json.Marshal(c.req)
		asks = append(asks, func() answer {
			m, err := nc.Request(c.subject, data, 10*time.Second)
			if err != nil {
				return answer{what: c.subject, err: err}
			}
			return answer{what: c.subject, code: m.Header.Get("Nats-Service-Error-Code"), body: m.Data}
		})
	}
	for _, path := range []string{
		fmt.Sprintf("/v1/audit?min_seq=%d", far),
		fmt.Sprintf("/v1/families/%s?min_seq=%d", f.FamilyID, far),
	} {
		asks = append(asks, func() answer {
			req, _ := http.NewRequest(http.MethodGet, "https://"+app.AuditAddr()+path, nil)
			req.Header.Set("Authorization", "Bearer "+testAuditToken)
			resp, err := auditClient(nil).Do(req)
			if err != nil {
				return answer{what: path, err: err}
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			return answer{what: "GET " + path, code: strconv.Itoa(resp.StatusCode), body: body, err: err}
		})
	}
	answers := make(chan answer, len(asks))
	for _, ask := range asks {
		go func() { answers <- ask() }()
	}
	for range asks {
		a := <-answers
		var e wire.ErrorReply
		if a.err != nil || a.code != "503" || json.Unmarshal(a.body, &e) != nil || e.Error != "temporarily_unavailable" {
			t.Errorf("%s with min_seq %d: code %q body %q err %v; want 503 temporarily_unavailable", a.what, far, a.code, a.body, a.err)
		}
	}
}

// auditFixture builds three families with every event type and returns the
// stream's events in seq order.
func auditFixture(t *testing.T, nc *nats.Conn) (families []wire.TokenReply, stream []storedEvent) {
	t.Helper()
	owners := []struct{ subject, client string }{{"pager-alice", "web-app"}, {"pager-bob", "mobile-app"}, {"pager-alice", "mobile-app"}}
	for i, o := range owners {
		f := mustIssue(t, nc, o.subject, o.client)
		families = append(families, f)
		first, token := f.RefreshToken, f.RefreshToken
		for r := 0; r < 3+i; r++ {
			token = mustRefresh(t, nc, token, o.client).RefreshToken
		}
		wantError(t, refresh(t, nc, token, "evil-client"), "invalid_grant") // refresh.rejected client_mismatch
		up := "admin"
		wantError(t, call(t, nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: token, ClientID: o.client, Scope: &up}), "invalid_scope")
		parent := token
		token = mustRefresh(t, nc, token, o.client).RefreshToken
		mustRefresh(t, nc, parent, o.client) // token.reused
		switch i {
		case 0: // token.replay_detected + family.revoked
			wantError(t, refresh(t, nc, first, o.client), "invalid_grant")
		case 1:
			r := call(t, nc, "tokens.cmd.revoke", wire.RevokeRequest{FamilyID: &f.FamilyID, Reason: "user_disabled"})
			if r.errCode != "" {
				t.Fatalf("revoke: %s", r.raw)
			}
		}
	}
	for _, f := range families {
		stream = append(stream, familyEvents(t, nc, f.FamilyID)...)
	}
	slices.SortFunc(stream, func(a, b storedEvent) int { return cmp.Compare(a.Seq, b.Seq) })
	return families, stream
}

func TestAuditPagingAndFilters(t *testing.T) {
	app := MustApp(t, testConfig(t), nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	families, stream := auditFixture(t, nc)
	lastSeq := stream[len(stream)-1].Seq

	whole := mustQuery[wire.AuditPage](t, nc, "tokens.query.audit", wire.AuditRequest{Limit: intp(1000), MinSeq: lastSeq})
	if len(whole.Events) != len(stream) || whole.NextAfterSeq != lastSeq {
		t.Fatalf("unpaged audit: %d events next %d; the stream has %d ending at %d", len(whole.Events), whole.NextAfterSeq, len(stream), lastSeq)
	}
	for i, e := range whole.Events {
		s := stream[i]
		var ctx map[string]string
		json.Unmarshal(e.Context, &ctx)
		if e.Seq != s.Seq || e.ID != s.ID || e.Type != s.Type || !e.Time.Equal(s.Time) || e.FamilyID != s.FamilyID ||
			e.Subject != s.Subject || e.ClientID != s.ClientID || e.Generation != s.Generation || e.Reason != s.Reason ||
			!reflect.DeepEqual(ctx, map[string]string(s.Context)) && len(ctx)+len(s.Context) > 0 {
			t.Fatalf("audit event %d differs from the stream:\n audit  %+v\n stream %+v", i, e, s.Envelope)
		}
	}
	types := map[string]bool{}
	for _, e := range whole.Events {
		types[e.Type] = true
	}
	if len(types) != 6 {
		t.Fatalf("fixture covers types %v, want all six", types)
	}

	t.Run("paging", func(t *testing.T) {
		for _, k := range []int{1, 2, 7, 1000} {
			if got := auditPages(t, nc, wire.AuditRequest{}, k); !reflect.DeepEqual(got, whole.Events) {
				t.Fatalf("limit %d: paged %v, unpaged %v", k, seqsOf(got), seqsOf(whole.Events))
			}
		}
		def := mustQuery[wire.AuditPage](t, nc, "tokens.query.audit", wire.AuditRequest{})
		if n := min(len(whole.Events), wire.DefaultAuditLimit); len(def.Events) != n {
			t.Fatalf("default limit: %d events, want %d", len(def.Events), n)
		}
		end := mustQuery[wire.AuditPage](t, nc, "tokens.query.audit", wire.AuditRequest{AfterSeq: lastSeq})
		if len(end.Events) != 0 || end.NextAfterSeq != 0 || end.AsOfSeq < lastSeq {
			t.Fatalf("page after the last event: %+v", end)
		}
	})

	mid := whole.Events[len(whole.Events)/3].Time
	late := whole.Events[2*len(whole.Events)/3].Time
	rfc := func(t time.Time) string { return t.Format(time.RFC3339Nano) }
	alice, mobile := "pager-alice", "mobile-app"
	cases := []struct {
		name string
		req  wire.AuditRequest
		want func(wire.AuditEvent) bool
	}{
		{"family 0", wire.AuditRequest{FamilyID: families[0].FamilyID},
			func(e wire.AuditEvent) bool { return e.FamilyID == families[0].FamilyID }},
		{"family 2", wire.AuditRequest{FamilyID: families[2].FamilyID},
			func(e wire.AuditEvent) bool { return e.FamilyID == families[2].FamilyID }},
		{"subject", wire.AuditRequest{Subject: alice},
			func(e wire.AuditEvent) bool { return e.Subject == alice }},
		{"client", wire.AuditRequest{ClientID: mobile},
			func(e wire.AuditEvent) bool { return e.ClientID == mobile }},
		{"subject and client", wire.AuditRequest{Subject: alice, ClientID: mobile},
			func(e wire.AuditEvent) bool { return e.Subject == alice && e.ClientID == mobile }},
		{"family of another subject", wire.AuditRequest{FamilyID: families[1].FamilyID, Subject: alice},
			func(wire.AuditEvent) bool { return false }},
		{"family and client", wire.AuditRequest{FamilyID: families[2].FamilyID, ClientID: mobile},
			func(e wire.AuditEvent) bool { return e.FamilyID == families[2].FamilyID }},
		{"one type", wire.AuditRequest{Types: []string{"token.rotated"}},
			func(e wire.AuditEvent) bool { return e.Type == "token.rotated" }},
		{"several types", wire.AuditRequest{Types: []string{"family.revoked", "token.replay_detected", "refresh.rejected"}},
			func(e wire.AuditEvent) bool {
				return e.Type == "family.revoked" || e.Type == "token.replay_detected" || e.Type == "refresh.rejected"
			}},
		{"types and client", wire.AuditRequest{ClientID: mobile, Types: []string{"token.reused", "token.issued"}},
			func(e wire.AuditEvent) bool {
				return e.ClientID == mobile && (e.Type == "token.reused" || e.Type == "token.issued")
			}},
		{"no such subject", wire.AuditRequest{Subject: "nobody"},
			func(wire.AuditEvent) bool { return false }},
		{"since (inclusive)", wire.AuditRequest{Since: rfc(mid)},
			func(e wire.AuditEvent) bool { return !e.Time.Before(mid) }},
		{"until (exclusive)", wire.AuditRequest{Until: rfc(mid)},
			func(e wire.AuditEvent) bool { return e.Time.Before(mid) }},
		{"since and until", wire.AuditRequest{Since: rfc(mid), Until: rfc(late)},
			func(e wire.AuditEvent) bool { return !e.Time.Before(mid) && e.Time.Before(late) }},
		{"since with an offset", wire.AuditRequest{Since: mid.In(time.FixedZone("", -5*3600)).Format(time.RFC3339Nano)},
			func(e wire.AuditEvent) bool { return !e.Time.Before(mid) }},
		{"everything", wire.AuditRequest{Subject: alice, ClientID: mobile, Types: []string{"token.rotated", "token.issued"},
			Since: rfc(whole.Events[0].Time), Until: rfc(late)},
			func(e wire.AuditEvent) bool {
				return e.Subject == alice && e.ClientID == mobile && (e.Type == "token.rotated" || e.Type == "token.issued") && e.Time.Before(late)
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var want []wire.AuditEvent
			for _, e := range whole.Events {
				if c.want(e) {
					want = append(want, e)
				}
			}
			for _, k := range []int{1000, 2} {
				got := auditPages(t, nc, c.req, k)
				if !slices.Equal(seqsOf(got), seqsOf(want)) {
					t.Fatalf("limit %d: got seqs %v, want %v", k, seqsOf(got), seqsOf(want))
				}
			}
		})
	}
}

// revokeReply sends a revoke and decodes its reply.
func revokeReply(tb testing.TB, nc *nats.Conn, req wire.RevokeRequest) wire.RevokeReply {
	tb.Helper()
	return mustQuery[wire.RevokeReply](tb, nc, "tokens.cmd.revoke", req)
}

// wantRevokedBy checks that a revoke reply covered the family: its last
// stream event, its read model as of the reply's seq, and that it is dead.
func wantRevokedBy(tb testing.TB, nc *nats.Conn, got wire.RevokeReply, familyID, token, client, reason string) {
	tb.Helper()
	evs := familyEvents(tb, nc, familyID)
	if last := evs[len(evs)-1]; last.Type != "family.revoked" || last.Reason != reason || last.Seq > got.Seq {
		tb.Fatalf("family %s ends with %s/%q at seq %d, want family.revoked/%s at or before the reply's seq %d",
			familyID, last.Type, last.Reason, last.Seq, reason, got.Seq)
	}
	fam := mustQuery[wire.FamilyView](tb, nc, "tokens.query.family", wire.FamilyRequest{FamilyID: familyID, MinSeq: got.Seq})
	if fam.Status != "revoked" || fam.RevokedReason != reason || fam.RevokedAt == nil || len(fam.Tokens) != 1 || fam.Tokens[0].Status != "revoked" {
		tb.Fatalf("family view after the revoke: %+v", fam)
	}
	wantError(tb, refresh(tb, nc, token, client), "invalid_grant")
}

func TestRevokeBySelectorCoversJustIssued(t *testing.T) {
	const rounds = 20
	t.Run("one instance", func(t *testing.T) {
		app := MustApp(t, testConfig(t), nil)
		nc := eventstest.MustConnect(t, app.NATSURL())
		for i := range rounds {
			// The same subject every round: earlier families are already
			// revoked and must not be counted again.
			f := mustIssue(t, nc, "rv-user", fmt.Sprintf("rv-client-%d", i))
			subject := "rv-user"
			got := revokeReply(t, nc, wire.RevokeRequest{Subject: &subject, Reason: "user_disabled"})
			if got.RevokedFamilies != 1 || got.Seq <= f.Seq {
				t.Fatalf("round %d: revoke by subject right after issue: %+v (issue seq %d)", i, got, f.Seq)
			}
			wantRevokedBy(t, nc, got, f.FamilyID, f.RefreshToken, fmt.Sprintf("rv-client-%d", i), "user_disabled")

			client := "rv-app"
			g := mustIssue(t, nc, fmt.Sprintf("rv-other-%d", i), client)
			got = revokeReply(t, nc, wire.RevokeRequest{ClientID: &client, Reason: "user_disabled"})
			if got.RevokedFamilies != 1 || got.Seq <= g.Seq {
				t.Fatalf("round %d: revoke by client right after issue: %+v (issue seq %d)", i, got, g.Seq)
			}
			wantRevokedBy(t, nc, got, g.FamilyID, g.RefreshToken, client, "user_disabled")
		}
	})

	t.Run("two instances", func(t *testing.T) {
		natsURL, apps := mustInstances(t, 2, nil)
		// Instance 0 takes no more requests, so every revoke below is served by
		// instance 1, from its own read model, while instance 0 issues.
		apps[0].api.Stop()
		if err := apps[0].nc.Flush(); err != nil {
			t.Fatal(err)
		}
		nc := eventstest.MustConnect(t, natsURL)
		issue := func(subject, client string) wire.TokenReply {
			t.Helper()
			g, err := apps[0].api.Tokens.Issue(t.Context(), eventsIssue(subject, client))
			if err != nil {
				t.Fatal(err)
			}
			return wire.TokenReply{FamilyID: g.Family.ID, RefreshToken: g.Token.Value(), Seq: g.Seq}
		}
		for i := range rounds {
			subject := fmt.Sprintf("rv2-user-%d", i)
			f := issue(subject, "rv2-web")
			got := revokeReply(t, nc, wire.RevokeRequest{Subject: &subject, Reason: "user_disabled"})
			if got.RevokedFamilies != 1 || got.Seq <= f.Seq {
				t.Fatalf("round %d: revoke by subject on the other instance: %+v (issue seq %d)", i, got, f.Seq)
			}
			wantRevokedBy(t, nc, got, f.FamilyID, f.RefreshToken, "rv2-web", "user_disabled")

			client := fmt.Sprintf("rv2-app-%d", i)
			g := issue("rv2-someone", client)
			got = revokeReply(t, nc, wire.RevokeRequest{ClientID: &client, Reason: "user_disabled"})
			if got.RevokedFamilies != 1 || got.Seq <= g.Seq {
				t.Fatalf("round %d: revoke by client on the other instance: %+v (issue seq %d)", i, got, g.Seq)
			}
			wantRevokedBy(t, nc, got, g.FamilyID, g.RefreshToken, client, "user_disabled")
		}
	})
}

// TestRevokeBySubjectIsLinearizable: while four clients keep issuing
// families of one subject through two instances, a revoke of that subject
// answers a position P, and every family whose token.issued is at or
// before P is revoked by this call; none is left active.
func TestRevokeBySubjectIsLinearizable(t *testing.T) {
	natsURL, _ := mustInstances(t, 2, func(c *Config) { c.IssueRate = 0 })
	nc := eventstest.MustConnect(t, natsURL)
	type issued struct {
		id  string
		seq uint64
	}
	for round := range 3 {
		subject := fmt.Sprintf("lin-user-%d", round)
		var (
			mu       sync.Mutex
			families []issued
			issuers  sync.WaitGroup
		)
		stop := make(chan struct{})
		for i := range 4 {
			issuers.Go(func() {
				conn := eventstest.MustConnect(t, natsURL) // its own connection: requests race for real
				for {
					select {
					case <-stop:
						return
					default:
					}
					r := call(t, conn, "tokens.cmd.issue", wire.IssueRequest{Subject: subject, ClientID: fmt.Sprintf("lin-client-%d", i)})
					if r.err.Error == "temporarily_unavailable" {
						continue // held back while the subject is being revoked
					}
					if r.errCode != "" {
						t.Errorf("issue: %s", r.raw)
						return
					}
					f := r.token
					mu.Lock()
					families = append(families, issued{f.FamilyID, f.Seq})
					mu.Unlock()
				}
			})
		}
		eventstest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(families) < 50 {
				return fmt.Errorf("%d families issued", len(families))
			}
			return nil
		})
		got := revokeReply(t, nc, wire.RevokeRequest{Subject: &subject, Reason: "user_disabled"})
		close(stop)
		issuers.Wait()

		covered := 0
		for _, f := range families {
			if f.seq > got.Seq {
				continue // issued after the revoke's position: not covered, by design
			}
			covered++
			if evs := familyEvents(t, nc, f.id); evs[len(evs)-1].Type != "family.revoked" {
				t.Fatalf("round %d: family issued at seq %d, before the revoke's seq %d, ends with %s",
					round, f.seq, got.Seq, evs[len(evs)-1].Type)
			}
		}
		if got.RevokedFamilies != covered {
			t.Fatalf("round %d: the revoke counted %d families, %d were issued at or before its seq %d (of %d issued)",
				round, got.RevokedFamilies, covered, got.Seq, len(families))
		}
	}
}

func TestHTTPReadAPI(t *testing.T) {
	app := MustApp(t, testConfig(t), nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	families, stream := auditFixture(t, nc)
	lastSeq := stream[len(stream)-1].Seq
	mustQuery[wire.AuditPage](t, nc, "tokens.query.audit", wire.AuditRequest{MinSeq: lastSeq})

	t.Run("audit", func(t *testing.T) {
		since, until := stream[1].Time, stream[len(stream)-2].Time
		for _, c := range []struct {
			query string
			req   wire.AuditRequest
		}{
			{"", wire.AuditRequest{}},
			{"limit=1000", wire.AuditRequest{Limit: intp(1000)}},
			{"type=token.rotated&type=refresh.rejected&type=token.issued&limit=3&after_seq=2",
				wire.AuditRequest{Types: []string{"token.rotated", "refresh.rejected", "token.issued"}, Limit: intp(3), AfterSeq: 2}},
			{url.Values{
				"family_id": {families[2].FamilyID}, "subject": {"pager-alice"}, "client_id": {"mobile-app"},
				"type": {"token.rotated", "token.reused"}, "since": {since.Format(time.RFC3339Nano)},
				"until": {until.Format(time.RFC3339Nano)}, "limit": {"2"}, "after_seq": {"1"}, "min_seq": {fmt.Sprint(lastSeq)},
			}.Encode(), wire.AuditRequest{FamilyID: families[2].FamilyID, Subject: "pager-alice", ClientID: "mobile-app",
				Types: []string{"token.rotated", "token.reused"}, Since: since.Format(time.RFC3339Nano),
				Until: until.Format(time.RFC3339Nano), Limit: intp(2), AfterSeq: 1, MinSeq: lastSeq}},
		} {
			path := "/v1/audit?" + c.query
			status, h, body := httpGet(t, app, path)
			if status != http.StatusOK || !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
				t.Fatalf("GET %s: %d %s", path, status, body)
			}
			var got, want map[string]any
			json.Unmarshal(body, &got)
			r := call(t, nc, "tokens.query.audit", c.req)
			if r.errCode != "" {
				t.Fatalf("query.audit %+v: %s", c.req, r.raw)
			}
			json.Unmarshal(r.raw, &want)
			if !reflect.DeepEqual(got, want) || len(want["events"].([]any)) == 0 {
				t.Fatalf("GET %s:\n %s\nquery.audit:\n %s", path, body, r.raw)
			}
		}
		for _, query := range []string{
			"bogus=1",
			"types=token.issued",
			"limit=0",
			"limit=1001",
			"limit=-1",
			"limit=abc",
			"limit=",
			"since=not-a-time",
			"until=2026-13-01T00:00:00Z",
			"since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
			"since=2026-01-01T00:00:00Z&until=2026-01-01T00:00:00Z",
			"type=bogus",
			"type=token.issued&type=bogus",
			"after_seq=-1",
			"after_seq=x",
			"min_seq=-1",
			"family_id=a&family_id=b",
			"subject=a&subject=a",
			"presented_by=a&presented_by=b",
			"presented_by=a%00b",
			"presented-by=evil-app",
			"limit=1&limit=2",
			"subject=" + strings.Repeat("s", 257),
		} {
			path := "/v1/audit?" + query
			status, h, body := httpGet(t, app, path)
			wantHTTPError(t, path, status, h, body, http.StatusBadRequest, "invalid_request")
		}
	})

	t.Run("families", func(t *testing.T) {
		for _, f := range families {
			status, _, body := httpGet(t, app, "/v1/families/"+f.FamilyID)
			r := call(t, nc, "tokens.query.family", wire.FamilyRequest{FamilyID: f.FamilyID})
			var got, want map[string]any
			json.Unmarshal(body, &got)
			json.Unmarshal(r.raw, &want)
			if status != http.StatusOK || r.errCode != "" || !reflect.DeepEqual(got, want) || got["family_id"] != f.FamilyID {
				t.Fatalf("GET /v1/families/%s: %d\n %s\nquery.family:\n %s", f.FamilyID, status, body, r.raw)
			}
		}
		for _, path := range []string{"/v1/families/no-such-family", "/v1/families/a.b"} {
			status, h, body := httpGet(t, app, path)
			wantHTTPError(t, path, status, h, body, http.StatusNotFound, "not_found")
		}
		for _, path := range []string{"/v1/families/" + families[0].FamilyID + "?bogus=1", "/v1/families/x?min_seq=-1", "/v1/families/x?min_seq=1&min_seq=2"} {
			status, h, body := httpGet(t, app, path)
			wantHTTPError(t, path, status, h, body, http.StatusBadRequest, "invalid_request")
		}
	})

	t.Run("jwks and health", func(t *testing.T) {
		status, h, body := httpGet(t, app, "/.well-known/jwks.json")
		r := call(t, nc, "tokens.keys", []byte(`{}`))
		var got, want struct {
			Keys []map[string]any `json:"keys"`
		}
		if err := json.Unmarshal(body, &got); err != nil || status != http.StatusOK || !strings.Contains(h.Get("Content-Type"), "json") {
			t.Fatalf("GET jwks: %d %s %v", status, body, err)
		}
		json.Unmarshal(r.raw, &want)
		if len(got.Keys) == 0 || !reflect.DeepEqual(got, want) {
			t.Fatalf("jwks over HTTP %s, over NATS %s", body, r.raw)
		}
		if status, _, body := httpGet(t, app, "/healthz"); status != http.StatusOK {
			t.Fatalf("/healthz: %d %s", status, body)
		}
	})
}

func TestReadyz(t *testing.T) {
	readyz := func(a *App) (int, string) {
		status, _, body := httpGet(t, a, "/readyz")
		return status, string(body)
	}
	t.Run("embedded", func(t *testing.T) {
		app := MustApp(t, testConfig(t), nil)
		eventstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			if status, body := readyz(app); status != http.StatusOK {
				return fmt.Errorf("/readyz %d %s", status, body)
			}
			return nil
		})
	})

	t.Run("projection lag", func(t *testing.T) {
		_, apps := mustInstances(t, 2, func(cfg *Config) { cfg.ReadyMaxLag = 5 })
		lagging, writer := apps[0], apps[1]
		eventstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			if status, body := readyz(lagging); status != http.StatusOK {
				return fmt.Errorf("/readyz %d %s", status, body)
			}
			return nil
		})
		pauseProjector(lagging)
		issue := func(n int) {
			for range n {
				if _, err := writer.api.Tokens.Issue(t.Context(), eventsIssue("ready-user", "web-app")); err != nil {
					t.Fatal(err)
				}
			}
		}
		issue(int(lagging.cfg.ReadyMaxLag)) // at the bound: still ready
		if status, body := readyz(lagging); status != http.StatusOK {
			t.Fatalf("lag at the bound: /readyz %d %s", status, body)
		}
		issue(1)
		eventstest.CheckFor(t, 5*time.Second, 50*time.Millisecond, func() error {
			if status, body := readyz(lagging); status != http.StatusServiceUnavailable || !strings.Contains(body, "behind") {
				return fmt.Errorf("projection %d events behind (bound %d): /readyz %d %s",
					lagging.cfg.ReadyMaxLag+1, lagging.cfg.ReadyMaxLag, status, body)
			}
			return nil
		})
		if lag := lagging.projector.Lag(); lag != lagging.cfg.ReadyMaxLag+1 {
			t.Fatalf("Projector.Lag() = %d, want %d", lag, lagging.cfg.ReadyMaxLag+1)
		}
		eventstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			// Its projector runs, but may not have applied the last events yet.
			if status, body := readyz(writer); status != http.StatusOK {
				return fmt.Errorf("the instance keeping up: /readyz %d %s", status, body)
			}
			return nil
		})
		resumeProjector(lagging)
		eventstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			if status, body := readyz(lagging); status != http.StatusOK {
				return fmt.Errorf("caught up: /readyz %d %s", status, body)
			}
			return nil
		})
		// Ready again once within the bound; the rest follows.
		eventstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			if lag := lagging.projector.Lag(); lag != 0 {
				return fmt.Errorf("caught up, Projector.Lag() = %d", lag)
			}
			return nil
		})
	})
}

func TestQueryValidation(t *testing.T) {
	app := MustApp(t, testConfig(t), nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	cases := []struct {
		subject, body string
	}{
		{"tokens.query.audit", `not json`},
		{"tokens.query.audit", `{"bogus":1}`},
		{"tokens.query.audit", `{"type":"token.issued"}`},
		{"tokens.query.audit", `{"limit":"10"}`},
		{"tokens.query.audit", `{"limit":1.5}`},
		{"tokens.query.audit", `{"limit":0}`},
		{"tokens.query.audit", `{"limit":-1}`},
		{"tokens.query.audit", `{"limit":1001}`},
		{"tokens.query.audit", `{"types":"token.issued"}`},
		{"tokens.query.audit", `{"types":["bogus"]}`},
		{"tokens.query.audit", `{"types":["token.issued","token.nope"]}`},
		{"tokens.query.audit", `{"types":[1]}`},
		{"tokens.query.audit", `{"since":"yesterday"}`},
		{"tokens.query.audit", `{"since":1700000000}`},
		{"tokens.query.audit", `{"until":"2026-13-01T00:00:00Z"}`},
		{"tokens.query.audit", `{"since":"2026-01-02T00:00:00Z","until":"2026-01-01T00:00:00Z"}`},
		{"tokens.query.audit", `{"since":"2026-01-01T00:00:00Z","until":"2026-01-01T00:00:00Z"}`},
		{"tokens.query.audit", `{"after_seq":-1}`},
		{"tokens.query.audit", `{"after_seq":"5"}`},
		{"tokens.query.audit", `{"after_seq":9223372036854775808}`},
		{"tokens.query.audit", `{"min_seq":-1}`},
		{"tokens.query.audit", `{"family_id":7}`},
		{"tokens.query.audit", `{"subject":"` + strings.Repeat("s", 257) + `"}`},
		{"tokens.query.audit", `{} {}`},
		{"tokens.query.family", `{}`},
		{"tokens.query.family", `{"family_id":""}`},
		{"tokens.query.family", `{"family_id":1}`},
		{"tokens.query.family", `{"family_id":"x","extra":true}`},
		{"tokens.query.family", `{"family_id":"x","min_seq":"1"}`},
		{"tokens.query.introspect", `{"token":"x"}`},
		{"tokens.query.introspect", `{"refresh_token":1}`},
		{"tokens.query.introspect", `{"refresh_token":"x","min_seq":-1}`},
		{"tokens.query.introspect", `[]`},
	}
	for _, c := range cases {
		r := call(t, nc, c.subject, []byte(c.body))
		wantError(t, r, "invalid_request")
		if r.errCode != "400" || r.err.Description == "" {
			t.Fatalf("%s %s: header code %q description %q", c.subject, c.body, r.errCode, r.err.Description)
		}
	}

	for _, id := range []string{"no-such-family", "a.b"} {
		r := call(t, nc, "tokens.query.family", wire.FamilyRequest{FamilyID: id})
		wantError(t, r, "not_found")
		if r.errCode != "404" {
			t.Fatalf("unknown family %q: header code %q", id, r.errCode)
		}
	}
	// The bounds themselves are valid.
	for _, body := range []string{`{"limit":1}`, `{"limit":1000}`, `{"limit":null}`, `{"types":[]}`,
		`{"since":"2026-01-01T00:00:00Z","until":"2026-01-01T00:00:00.000000001Z"}`} {
		mustQuery[wire.AuditPage](t, nc, "tokens.query.audit", []byte(body))
	}
}
