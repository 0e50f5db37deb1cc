package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/api/wire"
)

// local renders an RFC 3339 time the way human output shows it.
func local(t *testing.T, rfc3339 string, layout string) string {
	t.Helper()
	at, err := time.Parse(time.RFC3339, rfc3339)
	if err != nil {
		t.Fatal(err)
	}
	return at.Local().Format(layout)
}

const (
	kvLayout  = "2006-01-02 15:04:05 MST"
	rowLayout = "2006-01-02 15:04:05"
)

// eventJSON is an audit event as tokend sends it, spaced so that JSON Lines
// output visibly compacts it.
func eventJSON(seq uint64, typ, family string, gen uint64, reason, ip, at string) string {
	ctx := "{}"
	if ip != "" {
		ctx = fmt.Sprintf(`{"ip": %q, "user_agent": "curl/8"}`, ip)
	}
	return fmt.Sprintf(`{"seq": %d, "id": "ev-%d", "type": %q, "time": %q, "family_id": %q, "subject": "user-42", `+
		`"client_id": "web-app", "generation": %d, "reason": %q, "context": %s}`, seq, seq, typ, at, family, gen, reason, ctx)
}

// withPresenter adds presented_by (unless empty) and presented_generation
// to an eventJSON event, where tokend puts them.
func withPresenter(ev, by string, gen uint64) string {
	ev = strings.Replace(ev, `"reason"`, fmt.Sprintf(`"presented_generation": %d, "reason"`, gen), 1)
	if by != "" {
		ev = strings.Replace(ev, `"generation"`, fmt.Sprintf(`"presented_by": %q, "generation"`, by), 1)
	}
	return ev
}

// viaProxy adds a proxy_ip to an eventJSON event's context.
func viaProxy(ev, proxy string) string {
	return strings.Replace(ev, `"user_agent"`, fmt.Sprintf(`"proxy_ip": %q, "user_agent"`, proxy), 1)
}

func compact(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// fakeAudit answers tokens.query.audit from a list of events the way tokend
// does: events of req.FamilyID (if set) after req.AfterSeq and up to its
// position, at most req.Limit; temporarily_unavailable while min_seq is
// beyond its position.
type fakeAudit struct {
	mu     sync.Mutex
	events []string
	asOf   uint64
	last   time.Time // when the last request arrived
	// pageCap, when set, ends pages early, as tokend does once a page's
	// events reach its size bound.
	pageCap int
}

func (a *fakeAudit) add(asOf uint64, events ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events = append(a.events, events...)
	a.asOf = asOf
}

func (a *fakeAudit) lastRequest() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

func (a *fakeAudit) handle(r micro.Request) {
	var req wire.AuditRequest
	if err := json.Unmarshal(r.Data(), &req); err != nil {
		respondError(r, "400", `{"error":"invalid_request","error_description":"malformed JSON"}`)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.last = time.Now()
	if req.MinSeq > a.asOf {
		respondError(r, "503", `{"error":"temporarily_unavailable","error_description":"read model has not reached min_seq yet, retry","retry_after_ms":10}`)
		return
	}
	limit := wire.DefaultAuditLimit
	if req.Limit != nil {
		limit = *req.Limit
	}
	if a.pageCap > 0 {
		limit = min(limit, a.pageCap)
	}
	var page []string
	var next uint64
	for _, raw := range a.events {
		var ev wire.AuditEvent
		_ = json.Unmarshal([]byte(raw), &ev)
		if ev.Seq <= req.AfterSeq || ev.Seq > a.asOf || (req.FamilyID != "" && ev.FamilyID != req.FamilyID) || len(page) == limit {
			continue
		}
		page, next = append(page, raw), ev.Seq
	}
	_ = r.Respond(fmt.Appendf(nil, `{"events":[%s],"next_after_seq":%d,"as_of_seq":%d}`, strings.Join(page, ","), next, a.asOf))
}

// fields splits each line of s into whitespace-separated fields, rejoined
// with one space: table checks that do not depend on column widths.
func fields(s string) []string {
	var out []string
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		out = append(out, strings.Join(strings.Fields(line), " "))
	}
	return out
}

func join(parts ...string) string { return strings.Join(strings.Fields(strings.Join(parts, " ")), " ") }

func TestIntrospect(t *testing.T) {
	active := `{"active":true,"family_id":"fam-7f3a","sub":"user-42","client_id":"web-app","scope":"openid api:read",` +
		`"aud":["https://a.example","https://b.example"],"exp":1800000000,"iat":1700000000,"token_type":"refresh_token","as_of_seq":42}`
	inactive := `{"active":false,"as_of_seq":7}`
	f := serveFake(t, map[string]micro.HandlerFunc{"tokens.query.introspect": func(r micro.Request) {
		var req wire.IntrospectRequest
		_ = json.Unmarshal(r.Data(), &req)
		if req.RefreshToken == testRefresh {
			_ = r.Respond([]byte(active))
			return
		}
		_ = r.Respond([]byte(inactive))
	}})

	r := runCtl(t, testRefresh+"\n", "--nats-url", f.url, "introspect", "--token", "-", "--min-seq", "41")
	exp, iat := time.Unix(1800000000, 0).Local().Format(kvLayout), time.Unix(1700000000, 0).Local().Format(kvLayout)
	want := "active:    true\nfamily:    fam-7f3a\nsub:       user-42\nclient_id: web-app\nscope:     openid api:read\n" +
		"aud:       https://a.example, https://b.example\nexp:       " + exp + "\niat:       " + iat + "\nas_of_seq: 42\n"
	if r.code != 0 || r.stdout != want || r.stderr != "" {
		t.Fatalf("exit %d, stdout %q, want %q; stderr %q", r.code, r.stdout, want, r.stderr)
	}
	if req := f.request("tokens.query.introspect"); req["refresh_token"] != testRefresh || req["min_seq"] != 41.0 {
		t.Errorf("request = %v", req)
	}

	r = runCtl(t, "", "--nats-url", f.url, "introspect", "--token", "rt1.other")
	if r.code != 0 || r.stdout != "active:    false\nas_of_seq: 7\n" {
		t.Fatalf("inactive: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if req := f.request("tokens.query.introspect"); req["min_seq"] != 0.0 {
		t.Errorf("min_seq = %v without --min-seq", req["min_seq"])
	}

	r = runCtl(t, "", "--nats-url", f.url, "introspect", "--token", testRefresh, "--json")
	if r.code != 0 || r.stdout != active+"\n" {
		t.Fatalf("--json: exit %d, stdout %q", r.code, r.stdout)
	}
}

const familyReply = `{"family_id":"fam-7f3a","subject":"user-42","client_id":"web-app","scope":"openid api:read",` +
	`"audience":["https://a.example","https://b.example"],"status":"revoked","generation":3,` +
	`"created_at":"2026-01-02T10:00:00Z","last_used_at":"2026-01-02T10:20:00Z","expires_at":"2026-01-16T10:20:00Z",` +
	`"revoked_at":"2026-01-02T10:30:00Z","revoked_reason":"replay_detected","tokens":[` +
	`{"generation":1,"status":"rotated","issued_at":"2026-01-02T10:00:00Z","rotated_at":"2026-01-02T10:10:00Z"},` +
	`{"generation":2,"status":"rotated","issued_at":"2026-01-02T10:10:00Z","rotated_at":"2026-01-02T10:20:00Z"},` +
	`{"generation":3,"status":"revoked","issued_at":"2026-01-02T10:20:00Z","rotated_at":null}],"as_of_seq":9}`

func TestFamilyTimeline(t *testing.T) {
	audit := &fakeAudit{}
	audit.add(9,
		eventJSON(1, "token.issued", "fam-7f3a", 1, "", "203.0.113.7", "2026-01-02T10:00:00Z"),
		eventJSON(2, "token.rotated", "fam-7f3a", 2, "", "203.0.113.7", "2026-01-02T10:10:00Z"),
		eventJSON(3, "token.reused", "fam-7f3a", 2, "", "203.0.113.7", "2026-01-02T10:10:01Z"),
		withPresenter(eventJSON(4, "refresh.rejected", "fam-7f3a", 2, "client_mismatch", "2001:db8::7", "2026-01-02T10:15:00Z"), "evil-app", 2),
		eventJSON(5, "token.issued", "fam-other", 1, "", "10.0.0.1", "2026-01-02T10:16:00Z"),
		viaProxy(eventJSON(6, "token.rotated", "fam-7f3a", 3, "", "203.0.113.8", "2026-01-02T10:20:00Z"), "10.0.0.2"),
		withPresenter(eventJSON(7, "token.replay_detected", "fam-7f3a", 3, "", "192.0.2.66", "2026-01-02T10:30:00Z"), "", 1),
		eventJSON(8, "family.revoked", "fam-7f3a", 3, "replay_detected", "192.0.2.66", "2026-01-02T10:30:00Z"),
	)
	f := serveFake(t, map[string]micro.HandlerFunc{
		"tokens.query.family": func(r micro.Request) { _ = r.Respond([]byte(familyReply)) },
		"tokens.query.audit":  audit.handle,
	})
	r := runCtl(t, "", "--nats-url", f.url, "family", "fam-7f3a")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	header, table, ok := strings.Cut(r.stdout, "\n\n")
	if !ok {
		t.Fatalf("no blank line between header and timeline:\n%s", r.stdout)
	}
	kv := map[string]string{}
	for _, line := range strings.Split(header, "\n") {
		k, v, _ := strings.Cut(line, ":")
		kv[k] = strings.TrimSpace(v)
	}
	for k, want := range map[string]string{
		"family": "fam-7f3a", "subject": "user-42", "client": "web-app", "scope": "openid api:read",
		"audience": "https://a.example, https://b.example", "status": "revoked", "generation": "3",
		"created":    local(t, "2026-01-02T10:00:00Z", kvLayout),
		"last used":  local(t, "2026-01-02T10:20:00Z", kvLayout),
		"expires":    local(t, "2026-01-16T10:20:00Z", kvLayout),
		"revoked at": local(t, "2026-01-02T10:30:00Z", kvLayout), "revoked reason": "replay_detected", "as_of_seq": "9",
	} {
		if kv[k] != want {
			t.Errorf("%s: %q, want %q\n%s", k, kv[k], want, header)
		}
	}
	at := func(s string) string { return local(t, s, rowLayout) }
	want := []string{
		"TIME GEN EVENT TOKEN ROTATED REASON IP DETAIL",
		join(at("2026-01-02T10:00:00Z"), "1 token.issued rotated", at("2026-01-02T10:10:00Z"), "- 203.0.113.7 -"),
		join(at("2026-01-02T10:10:00Z"), "2 token.rotated rotated", at("2026-01-02T10:20:00Z"), "- 203.0.113.7 -"),
		join(at("2026-01-02T10:10:01Z"), "2 token.reused - - - 203.0.113.7 -"),
		join(at("2026-01-02T10:15:00Z"), "2 refresh.rejected - - client_mismatch 2001:db8::7 presented by evil-app (generation 2)"),
		join(at("2026-01-02T10:20:00Z"), "3 token.rotated revoked - - 203.0.113.8 via proxy 10.0.0.2"),
		join(at("2026-01-02T10:30:00Z"), "3 token.replay_detected - - - 192.0.2.66 generation 1 presented, family at generation 3"),
		join(at("2026-01-02T10:30:00Z"), "3 family.revoked - - replay_detected 192.0.2.66 -"),
	}
	if got := fields(table); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("timeline:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	if req := f.request("tokens.query.family"); req["family_id"] != "fam-7f3a" || req["min_seq"] != 0.0 {
		t.Errorf("family request = %v", req)
	}
	reqs := f.requests("tokens.query.audit")
	if len(reqs) != 2 {
		t.Fatalf("%d audit requests, want a page and the empty one: %v", len(reqs), reqs)
	}
	if r := reqs[0]; r["family_id"] != "fam-7f3a" || r["limit"] != 1000.0 || r["after_seq"] != 0.0 || r["min_seq"] != 9.0 {
		t.Errorf("first audit request = %v, want min_seq = the family's as_of_seq", r)
	}
	if r := reqs[1]; r["family_id"] != "fam-7f3a" || r["after_seq"] != 8.0 || r["min_seq"] != 0.0 {
		t.Errorf("second audit request = %v", r)
	}
}

func TestFamilyArgsAndJSON(t *testing.T) {
	f := serveFake(t, map[string]micro.HandlerFunc{
		"tokens.query.family": func(r micro.Request) { _ = r.Respond([]byte(familyReply)) },
		"tokens.query.audit":  (&fakeAudit{}).handle,
	})
	for _, tc := range []struct {
		args       []string
		wantID     string
		wantMinSeq float64
	}{
		{[]string{"family", "fam-7f3a", "--json"}, "fam-7f3a", 0},
		{[]string{"family", "--min-seq", "5", "fam-1", "--json"}, "fam-1", 5},
		{[]string{"--json", "family", "fam-2", "--min-seq", "6"}, "fam-2", 6},
		{[]string{"--json", "family", "--", "-odd-id"}, "-odd-id", 0},
		// A family id begins with "-" one time in 64: it is an id, not a
		// flag, wherever it comes.
		{[]string{"--json", "family", "-q2dH0c3xJm1Xk0yR3nWtA"}, "-q2dH0c3xJm1Xk0yR3nWtA", 0},
		{[]string{"--json", "family", "--min-seq", "7", "-q2dH0c3xJm1Xk0yR3nWtA"}, "-q2dH0c3xJm1Xk0yR3nWtA", 7},
		{[]string{"family", "-q2dH0c3xJm1Xk0yR3nWtA", "--json"}, "-q2dH0c3xJm1Xk0yR3nWtA", 0},
	} {
		r := runCtl(t, "", append([]string{"--nats-url", f.url}, tc.args...)...)
		if r.code != 0 || r.stdout != familyReply+"\n" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", tc.args, r.code, r.stdout, r.stderr)
		}
		if req := f.request("tokens.query.family"); req["family_id"] != tc.wantID || req["min_seq"] != tc.wantMinSeq {
			t.Errorf("%q: request = %v", tc.args, req)
		}
	}
	if n := len(f.requests("tokens.query.audit")); n != 0 {
		t.Errorf("--json asked for the audit events %d times; it prints the family reply only", n)
	}
}

func TestFamilyNotFound(t *testing.T) {
	body := `{"error":"not_found","error_description":"no family \"nope\""}`
	f := serveFake(t, map[string]micro.HandlerFunc{"tokens.query.family": func(r micro.Request) { respondError(r, "404", body) }})
	r := runCtl(t, "", "--nats-url", f.url, "family", "nope")
	if r.code != 1 || r.stdout != "" || r.stderr != "tokenctl: not_found: no family \"nope\"\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCtl(t, "", "--nats-url", f.url, "--json", "family", "nope")
	if r.code != 1 || r.stdout != body+"\n" {
		t.Fatalf("--json: exit %d, stdout %q", r.code, r.stdout)
	}
}

func TestAuditPage(t *testing.T) {
	audit := &fakeAudit{}
	audit.add(3,
		eventJSON(1, "token.issued", "fam-7f3a", 1, "", "203.0.113.7", "2026-01-02T10:00:00Z"),
		eventJSON(2, "family.revoked", "fam-7f3a", 1, "user_disabled", "", "2026-01-02T10:05:00Z"),
		eventJSON(3, "refresh.rejected", "fam-7f3a", 1, "family_revoked", "192.0.2.1", "2026-01-02T10:06:00Z"),
	)
	f := serveFake(t, map[string]micro.HandlerFunc{"tokens.query.audit": audit.handle})
	before := time.Now()
	r := runCtl(t, "", "--nats-url", f.url, "audit", "--family", "fam-7f3a", "--subject", "user-42", "--client-id", "web-app",
		"--presented-by", "evil-app", "--type", "token.issued", "--type", "family.revoked", "--since", "2026-01-02T12:00:00+02:00", "--until", "1h",
		"--limit", "2", "--min-seq", "3")
	after := time.Now()
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	want := []string{
		"SEQ TIME TYPE FAMILY SUBJECT CLIENT GEN REASON IP DETAIL",
		join("1", local(t, "2026-01-02T10:00:00Z", rowLayout), "token.issued fam-7f3a user-42 web-app 1 - 203.0.113.7 -"),
		join("2", local(t, "2026-01-02T10:05:00Z", rowLayout), "family.revoked fam-7f3a user-42 web-app 1 user_disabled - -"),
	}
	if got := fields(r.stdout); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("table:\n%s\nwant:\n%s", r.stdout, strings.Join(want, "\n"))
	}
	lines := strings.Split(r.stdout, "\n")
	if strings.Index(lines[0], "TYPE") != strings.Index(lines[1], "token.issued") || strings.Index(lines[0], "IP") != strings.Index(lines[1], "203.0.113.7") {
		t.Errorf("columns not aligned:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "--after-seq 2") {
		t.Errorf("a full page should say how to get the next one; stderr %q", r.stderr)
	}

	req := f.request("tokens.query.audit")
	types, _ := req["types"].([]any)
	if req["family_id"] != "fam-7f3a" || req["subject"] != "user-42" || req["client_id"] != "web-app" ||
		req["presented_by"] != "evil-app" || len(types) != 2 ||
		types[0] != "token.issued" || types[1] != "family.revoked" || req["limit"] != 2.0 || req["after_seq"] != 0.0 || req["min_seq"] != 3.0 {
		t.Errorf("request = %v", req)
	}
	if req["since"] != "2026-01-02T10:00:00Z" {
		t.Errorf("since = %v, want the RFC 3339 UTC time", req["since"])
	}
	until, err := time.Parse(time.RFC3339, fmt.Sprint(req["until"]))
	if err != nil || !strings.HasSuffix(fmt.Sprint(req["until"]), "Z") ||
		until.Before(before.Add(-time.Hour).Truncate(time.Second)) || until.After(after.Add(-time.Hour)) {
		t.Errorf("until = %v, want now-1h in UTC", req["until"])
	}

	r = runCtl(t, "", "--nats-url", f.url, "audit", "--after-seq", "2")
	if got := fields(r.stdout); r.code != 0 || len(got) != 2 || !strings.HasPrefix(got[1], "3 ") || r.stderr != "" {
		t.Errorf("--after-seq 2: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	req = f.request("tokens.query.audit")
	if _, presenter := req["presented_by"]; req["after_seq"] != 2.0 || req["limit"] != 100.0 || req["since"] != "" || req["types"] != nil ||
		presenter {
		t.Errorf("request = %v", req) // without --presented-by, a request older tokends accept
	}
}

func TestAuditJSONPage(t *testing.T) {
	reply := `{"events": [` + eventJSON(1, "token.issued", "fam-7f3a", 1, "", "", "2026-01-02T10:00:00Z") + `], "next_after_seq": 1, "as_of_seq": 1}`
	f := startFake(t, map[string]string{"tokens.query.audit": reply}, nil)
	r := runCtl(t, "", "--nats-url", f.url, "--json", "audit", "--limit", "1")
	if r.code != 0 || r.stdout != reply+"\n" || r.stderr != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestAuditAll(t *testing.T) {
	audit := &fakeAudit{}
	var evs []string
	for seq := range uint64(5) {
		evs = append(evs, eventJSON(seq+1, "token.rotated", "fam-7f3a", seq+1, "", "203.0.113.7", "2026-01-02T10:00:00Z"))
	}
	audit.add(5, evs...)
	f := serveFake(t, map[string]micro.HandlerFunc{"tokens.query.audit": audit.handle})

	r := runCtl(t, "", "--nats-url", f.url, "audit", "--all", "--limit", "2")
	got := fields(r.stdout)
	if r.code != 0 || r.stderr != "" || len(got) != 6 || got[0] != "SEQ TIME TYPE FAMILY SUBJECT CLIENT GEN REASON IP DETAIL" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	for i, line := range got[1:] {
		if !strings.HasPrefix(line, fmt.Sprintf("%d ", i+1)) {
			t.Errorf("row %d = %q", i, line)
		}
	}
	var after []any
	for _, req := range f.requests("tokens.query.audit") {
		after = append(after, req["after_seq"])
	}
	if fmt.Sprint(after) != "[0 2 4 5]" {
		t.Errorf("after_seq of the requests = %v, want pages until an empty one", after)
	}

	r = runCtl(t, "", "--nats-url", f.url, "audit", "--all", "--json", "--limit", "3")
	var want strings.Builder
	for _, ev := range evs {
		want.WriteString(compact(t, ev) + "\n")
	}
	if r.code != 0 || r.stdout != want.String() {
		t.Fatalf("--json --all: exit %d, stdout:\n%s\nwant JSON Lines:\n%s", r.code, r.stdout, want.String())
	}
}

// syncBuffer is a bytes.Buffer safe to read while a command writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAuditFollow(t *testing.T) {
	audit := &fakeAudit{}
	audit.add(2,
		eventJSON(1, "token.issued", "fam-7f3a", 1, "", "203.0.113.7", "2026-01-02T10:00:00Z"),
		eventJSON(2, "token.rotated", "fam-7f3a", 2, "", "203.0.113.7", "2026-01-02T10:05:00Z"),
	)
	f := serveFake(t, map[string]micro.HandlerFunc{"tokens.query.audit": audit.handle})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	start := time.Now()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--nats-url", f.url, "--timeout", "300ms", "audit", "--follow", "--limit", "2", "--family", "fam-7f3a"},
			strings.NewReader(""), &stdout, &stderr)
	}()
	requested := func(after, minSeq float64) bool {
		for _, r := range f.requests("tokens.query.audit") {
			if r["after_seq"] == after && r["min_seq"] == minSeq && r["family_id"] == "fam-7f3a" {
				return true
			}
		}
		return false
	}
	// Caught up after a full page and an empty one, it waits for seq 3, and
	// keeps asking through temporarily_unavailable well past --timeout.
	waitFor(t, "a request waiting for seq 3 after --timeout", func() bool {
		return requested(2, 3) && audit.lastRequest().After(start.Add(time.Second))
	})
	if !requested(0, 0) || !requested(2, 0) {
		t.Errorf("requests = %v", f.requests("tokens.query.audit"))
	}
	audit.add(3, eventJSON(3, "token.replay_detected", "fam-7f3a", 2, "", "192.0.2.66", "2026-01-02T10:30:00Z"))
	waitFor(t, "event 3 on stdout", func() bool { return strings.Contains(stdout.String(), "token.replay_detected") })
	waitFor(t, "a request waiting for seq 4", func() bool { return requested(3, 4) })
	cancel()
	select {
	case code := <-done:
		if code != 0 || stderr.String() != "" {
			t.Fatalf("exit %d, stderr %q", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not stop on cancel")
	}
	got := fields(stdout.String())
	if len(got) != 4 || !strings.HasPrefix(got[0], "SEQ ") || !strings.HasPrefix(got[1], "1 ") ||
		!strings.HasPrefix(got[2], "2 ") || !strings.HasPrefix(got[3], "3 ") {
		t.Fatalf("stdout:\n%s", stdout.String())
	}
	lines := strings.Split(stdout.String(), "\n")
	if strings.Index(lines[0], "IP") != strings.Index(lines[3], "192.0.2.66") {
		t.Errorf("a later page is not aligned with the header:\n%s", stdout.String())
	}
}

// TestAuditFollowPastShortPages: a page that tokend cut short by size is
// not the end; follow prints what comes after it without waiting for a
// new event.
func TestAuditFollowPastShortPages(t *testing.T) {
	audit := &fakeAudit{pageCap: 1}
	audit.add(3,
		eventJSON(1, "token.issued", "fam-7f3a", 1, "", "203.0.113.7", "2026-01-02T10:00:00Z"),
		eventJSON(2, "token.rotated", "fam-7f3a", 2, "", "203.0.113.7", "2026-01-02T10:05:00Z"),
		eventJSON(3, "token.rotated", "fam-7f3a", 3, "", "203.0.113.7", "2026-01-02T10:06:00Z"),
	)
	f := serveFake(t, map[string]micro.HandlerFunc{"tokens.query.audit": audit.handle})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--nats-url", f.url, "audit", "--follow", "--limit", "100"}, strings.NewReader(""), &stdout, &stderr)
	}()
	waitFor(t, "all three events", func() bool { return len(fields(stdout.String())) == 4 })
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
}

func TestAuditFollowFailsOnOtherErrors(t *testing.T) {
	body := `{"error":"invalid_request","error_description":"since must be before until"}`
	f := startFake(t, nil, map[string]string{"tokens.query.audit": body})
	r := runCtl(t, "", "--nats-url", f.url, "audit", "--follow")
	if r.code != 1 || r.stderr != "tokenctl: invalid_request: since must be before until\n" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestAuditCursorMustAdvance(t *testing.T) {
	reply := `{"events":[` + eventJSON(1, "token.issued", "f", 1, "", "", "2026-01-02T10:00:00Z") + `],"next_after_seq":0,"as_of_seq":1}`
	f := startFake(t, map[string]string{"tokens.query.audit": reply}, nil)
	r := runCtl(t, "", "--nats-url", f.url, "audit", "--all")
	if r.code != 1 || !strings.Contains(r.stderr, "does not advance") || len(f.requests("tokens.query.audit")) != 1 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestTimeArg(t *testing.T) {
	now := time.Date(2026, 1, 2, 12, 0, 0, 123, time.FixedZone("X", 3600))
	for in, want := range map[string]string{
		"":                            "",
		"90m":                         "2026-01-02T09:30:00Z",
		"7d":                          "2025-12-26T11:00:00Z",
		"0s":                          "2026-01-02T11:00:00Z",
		"2026-01-02T15:04:05.5+02:00": "2026-01-02T13:04:05.5Z",
	} {
		got, err := timeArg("since", in, now)
		if err != nil || got != want {
			t.Errorf("timeArg(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"1.5d", "d", "-2d", "-1h", "tomorrow", "2026-01-02"} {
		var ue *usageError
		if _, err := timeArg("since", in, now); !errors.As(err, &ue) {
			t.Errorf("timeArg(%q): err = %v, want a usage error", in, err)
		}
	}
}

func TestCell(t *testing.T) {
	for in, want := range map[string]string{
		"":                 "-",
		"user-42":          "user-42",
		"Zoë 李":            "Zoë 李",
		"a\tb\x1b[2Jc\n":   "a\uFFFDb\uFFFD[2Jc\uFFFD",
		"evil\u202eflip":   "evil\uFFFDflip",
		"\x00\x7f":         "\uFFFD\uFFFD",
		"203.0.113.7:4242": "203.0.113.7:4242",
	} {
		if got := cell(in); got != want {
			t.Errorf("cell(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestAuditShowsThePresenter: the table says which client presented
// another's token and with which generation, which generation a replay
// presented beside the family's, and the proxy a caller came through; JSON
// Lines keep presented_by and presented_generation as tokend sent them.
func TestAuditShowsThePresenter(t *testing.T) {
	evs := []string{
		withPresenter(eventJSON(1, "refresh.rejected", "fam-7f3a", 2, "client_mismatch", "2001:db8::7", "2026-01-02T10:15:00Z"), "evil-app", 2),
		withPresenter(eventJSON(2, "refresh.rejected", "fam-7f3a", 2, "retired_key", "198.51.100.7", "2026-01-02T10:16:00Z"), "other-app", 1),
		withPresenter(eventJSON(3, "token.replay_detected", "fam-7f3a", 2, "", "192.0.2.66", "2026-01-02T10:30:00Z"), "", 1),
		withPresenter(eventJSON(4, "refresh.rejected", "fam-7f3a", 2, "invalid_scope", "192.0.2.66", "2026-01-02T10:31:00Z"), "", 2),
		viaProxy(eventJSON(5, "token.rotated", "fam-7f3a", 3, "", "203.0.113.9", "2026-01-02T10:32:00Z"), "127.0.0.1"),
	}
	audit := &fakeAudit{}
	audit.add(5, evs...)
	f := serveFake(t, map[string]micro.HandlerFunc{"tokens.query.audit": audit.handle})
	r := runCtl(t, "", "--nats-url", f.url, "audit", "--all")
	at := func(s string) string { return local(t, s, rowLayout) }
	want := []string{
		"SEQ TIME TYPE FAMILY SUBJECT CLIENT GEN REASON IP DETAIL",
		join("1", at("2026-01-02T10:15:00Z"), "refresh.rejected fam-7f3a user-42 web-app 2 client_mismatch 2001:db8::7 presented by evil-app (generation 2)"),
		join("2", at("2026-01-02T10:16:00Z"), "refresh.rejected fam-7f3a user-42 web-app 2 retired_key 198.51.100.7 presented by other-app (generation 1)"),
		join("3", at("2026-01-02T10:30:00Z"), "token.replay_detected fam-7f3a user-42 web-app 2 - 192.0.2.66 generation 1 presented, family at generation 2"),
		join("4", at("2026-01-02T10:31:00Z"), "refresh.rejected fam-7f3a user-42 web-app 2 invalid_scope 192.0.2.66 -"),
		join("5", at("2026-01-02T10:32:00Z"), "token.rotated fam-7f3a user-42 web-app 3 - 203.0.113.9 via proxy 127.0.0.1"),
	}
	if got := fields(r.stdout); r.code != 0 || strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("exit %d, stderr %q, table:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, strings.Join(want, "\n"))
	}

	r = runCtl(t, "", "--nats-url", f.url, "audit", "--all", "--json")
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if r.code != 0 || len(lines) != len(evs) {
		t.Fatalf("--json: exit %d, stdout %q", r.code, r.stdout)
	}
	var ev wire.AuditEvent
	if err := json.Unmarshal([]byte(lines[0]), &ev); err != nil || ev.PresentedBy != "evil-app" || ev.PresentedGeneration != 2 ||
		ev.ClientID != "web-app" || !strings.Contains(lines[0], `"presented_by":"evil-app","generation":2,"presented_generation":2,`) {
		t.Errorf("--json event %s: %+v, %v", lines[0], ev, err)
	}
}

// withDPoP adds dpop_jkt (unless empty) and presented_jkt (unless empty)
// to an eventJSON event, where tokend puts them.
func withDPoP(ev, bound, presented string) string {
	if presented != "" {
		ev = strings.Replace(ev, `"reason"`, fmt.Sprintf(`"presented_jkt": %q, "reason"`, presented), 1)
	}
	if bound != "" {
		ev = strings.Replace(ev, `"reason"`, fmt.Sprintf(`"dpop_jkt": %q, "reason"`, bound), 1)
	}
	return ev
}

// TestFamilyAndAuditShowTheDPoPBinding: tokenctl family says which DPoP
// key a family is bound to, and both tables say which key a mismatched
// proof was by, and what a refusal without a proof and the revocation
// after a mismatch were about.
func TestFamilyAndAuditShowTheDPoPBinding(t *testing.T) {
	const bound, thief = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I", "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
	family := strings.Replace(familyReply, `"revoked_reason":"replay_detected"`, `"revoked_reason":"dpop_key_mismatch"`, 1)
	family = strings.Replace(family, `"as_of_seq":9}`, `"as_of_seq":9,"dpop_jkt":"`+bound+`"}`, 1)
	audit := &fakeAudit{}
	audit.add(9,
		withDPoP(eventJSON(1, "token.issued", "fam-7f3a", 1, "", "203.0.113.7", "2026-01-02T10:00:00Z"), bound, ""),
		withDPoP(eventJSON(2, "token.rotated", "fam-7f3a", 2, "", "203.0.113.7", "2026-01-02T10:10:00Z"), bound, ""),
		withDPoP(eventJSON(3, "token.rotated", "fam-7f3a", 3, "", "203.0.113.7", "2026-01-02T10:20:00Z"), bound, ""),
		withDPoP(eventJSON(4, "refresh.rejected", "fam-7f3a", 3, "dpop_proof_missing", "203.0.113.7", "2026-01-02T10:25:00Z"), bound, ""),
		withPresenter(withDPoP(eventJSON(5, "token.key_mismatch", "fam-7f3a", 3, "", "192.0.2.66", "2026-01-02T10:30:00Z"), bound, thief), "", 3),
		withDPoP(eventJSON(6, "family.revoked", "fam-7f3a", 3, "dpop_key_mismatch", "192.0.2.66", "2026-01-02T10:30:00Z"), bound, ""),
		eventJSON(7, "refresh.rejected", "fam-other", 1, "dpop_proof_missing", "10.0.0.1", "2026-01-02T10:31:00Z"),
	)
	f := serveFake(t, map[string]micro.HandlerFunc{
		"tokens.query.family": func(r micro.Request) { _ = r.Respond([]byte(family)) },
		"tokens.query.audit":  audit.handle,
	})
	r := runCtl(t, "", "--nats-url", f.url, "family", "fam-7f3a")
	header, table, ok := strings.Cut(r.stdout, "\n\n")
	if r.code != 0 || !ok {
		t.Fatalf("exit %d, stderr %q, stdout:\n%s", r.code, r.stderr, r.stdout)
	}
	if !slices.Contains(strings.Split(header, "\n"), "bound to:       DPoP key "+bound) {
		t.Errorf("no binding in the header:\n%s", header)
	}
	at := func(s string) string { return local(t, s, rowLayout) }
	mismatch := "proof by key " + thief + ", family bound to " + bound
	for _, want := range []string{
		join(at("2026-01-02T10:25:00Z"), "3 refresh.rejected - - dpop_proof_missing 203.0.113.7 no DPoP proof, family bound to", bound),
		join(at("2026-01-02T10:30:00Z"), "3 token.key_mismatch - - - 192.0.2.66", mismatch),
		join(at("2026-01-02T10:30:00Z"), "3 family.revoked - - dpop_key_mismatch 192.0.2.66 after a proof by another key, family bound to", bound),
	} {
		if !slices.Contains(fields(table), want) {
			t.Errorf("timeline has no line %q:\n%s", want, table)
		}
	}

	// --type takes token.key_mismatch (the fake answers every event).
	r = runCtl(t, "", "--nats-url", f.url, "audit", "--all", "--type", "token.key_mismatch", "--type", "refresh.rejected")
	if got := fields(r.stdout); r.code != 0 || len(got) != 8 ||
		got[5] != join("5", at("2026-01-02T10:30:00Z"), "token.key_mismatch fam-7f3a user-42 web-app 3 - 192.0.2.66", mismatch) ||
		got[7] != join("7", at("2026-01-02T10:31:00Z"), "refresh.rejected fam-other user-42 web-app 1 dpop_proof_missing 10.0.0.1 no DPoP proof, which the client must send") {
		t.Errorf("exit %d, stderr %q, table:\n%s", r.code, r.stderr, r.stdout)
	}

	// A bearer family shows no binding.
	none := &fakeAudit{}
	none.add(9)
	f = serveFake(t, map[string]micro.HandlerFunc{
		"tokens.query.family": func(r micro.Request) { _ = r.Respond([]byte(familyReply)) },
		"tokens.query.audit":  none.handle,
	})
	if r := runCtl(t, "", "--nats-url", f.url, "family", "fam-7f3a"); r.code != 0 || strings.Contains(r.stdout, "bound to") {
		t.Errorf("bearer family: exit %d, stdout:\n%s", r.code, r.stdout)
	}
}

// TestAuditExplainsALostRotation: the refusal of a lost reply's retry
// after the reuse interval says so, with the generation presented.
func TestAuditExplainsALostRotation(t *testing.T) {
	audit := &fakeAudit{}
	audit.add(3,
		withPresenter(eventJSON(1, "refresh.rejected", "fam-7f3a", 3, "lost_rotation", "203.0.113.7", "2026-01-02T10:25:00Z"), "", 2),
		eventJSON(2, "family.revoked", "fam-7f3a", 3, "lost_rotation", "203.0.113.7", "2026-01-02T10:25:00Z"),
	)
	f := serveFake(t, map[string]micro.HandlerFunc{"tokens.query.audit": audit.handle})
	r := runCtl(t, "", "--nats-url", f.url, "audit", "--all", "--family", "fam-7f3a")
	at := local(t, "2026-01-02T10:25:00Z", rowLayout)
	want := join("1", at, "refresh.rejected fam-7f3a user-42 web-app 3 lost_rotation 203.0.113.7",
		"a lost reply's retry, after the reuse interval, generation 2 presented, family at generation 3")
	if got := fields(r.stdout); r.code != 0 || len(got) < 2 || got[1] != want {
		t.Fatalf("exit %d, stderr %q, table:\n%s\nwant %q", r.code, r.stderr, r.stdout, want)
	}
}
