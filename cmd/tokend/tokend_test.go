package main

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
)

func TestRotationChain(t *testing.T) {
	app := MustApp(t, testConfig(t), nil)
	nc := eventstest.MustConnect(t, app.NATSURL())

	first := mustIssue(t, nc, "user-1", "web-app")
	seen := map[string]bool{first.RefreshToken: true}
	token, lastSeq := first.RefreshToken, first.Seq
	for range 5 {
		r := mustRefresh(t, nc, token, "web-app")
		if seen[r.RefreshToken] || r.FamilyID != first.FamilyID || r.Seq <= lastSeq {
			t.Fatalf("rotation: %+v (seen %v, last seq %d)", r, seen[r.RefreshToken], lastSeq)
		}
		seen[r.RefreshToken] = true
		token, lastSeq = r.RefreshToken, r.Seq
	}

	evs := familyEvents(t, nc, first.FamilyID)
	if len(evs) != 6 {
		t.Fatalf("%d events, want issued + 5 rotated", len(evs))
	}
	for i, e := range evs {
		want := "token.rotated"
		if i == 0 {
			want = "token.issued"
		}
		if e.Type != want || e.Generation != uint64(i+1) || e.MsgID != e.ID {
			t.Errorf("event %d: %s generation %d msg id %q id %q", i, e.Type, e.Generation, e.MsgID, e.ID)
		}
		if e.Data.Family.Generation != e.Generation {
			t.Errorf("event %d: snapshot generation %d", i, e.Data.Family.Generation)
		}
	}
	if evs[5].Seq != lastSeq {
		t.Errorf("last reply seq %d, stream seq %d", lastSeq, evs[5].Seq)
	}
	// Only the newest token works; its parent is still inside the reuse
	// interval, so the oldest one is the ancestor that proves replay.
	wantError(t, refresh(t, nc, first.RefreshToken, "web-app"), "invalid_grant")
	wantError(t, refresh(t, nc, token, "web-app"), "invalid_grant")
}

// concurrentRefresh presents the same token from n goroutines spread over conns.
func concurrentRefresh(t *testing.T, conns []*nats.Conn, token, client string, n int) []reply {
	t.Helper()
	replies := make([]reply, n)
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			replies[i] = refresh(t, conns[i%len(conns)], token, client)
		}()
	}
	close(gate)
	wg.Wait()
	return replies
}

func requireOneChild(t *testing.T, nc *nats.Conn, familyID string, replies []reply) string {
	t.Helper()
	child := ""
	for i, r := range replies {
		if r.errCode != "" {
			t.Fatalf("refresh %d failed: %s", i, r.raw)
		}
		if child == "" {
			child = r.token.RefreshToken
		}
		if r.token.RefreshToken != child {
			t.Fatalf("refresh %d returned a different child: the chain forked", i)
		}
	}
	c := countTypes(familyEvents(t, nc, familyID))
	if c["token.rotated"] != 1 || c["token.reused"] != len(replies)-1 || c["family.revoked"] != 0 {
		t.Fatalf("events %v; want 1 token.rotated, %d token.reused, no revocation", c, len(replies)-1)
	}
	return child
}

func TestConcurrentRefreshSameToken(t *testing.T) {
	app := MustApp(t, testConfig(t), nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	f := mustIssue(t, nc, "user-2", "web-app")

	child := requireOneChild(t, nc, f.FamilyID, concurrentRefresh(t, []*nats.Conn{nc}, f.RefreshToken, "web-app", 32))
	mustRefresh(t, nc, child, "web-app")
}

// eachProtection runs test as the v1 contract stores personal data (in
// clear) and under --pii-key-file (sealed, opened on every load): the
// invariants hold either way.
func eachProtection(t *testing.T, test func(t *testing.T, configure func(*Config))) {
	t.Run("clear", func(t *testing.T) { test(t, func(*Config) {}) })
	t.Run("protected", func(t *testing.T) {
		key := piiKeyFile(t)
		test(t, func(c *Config) { c.PIIKeyFile = key })
	})
}

func TestConcurrentRefreshTwoInstances(t *testing.T) {
	eachProtection(t, func(t *testing.T, configure func(*Config)) {
		natsURL, _ := mustInstances(t, 2, configure)
		conns := []*nats.Conn{eventstest.MustConnect(t, natsURL), eventstest.MustConnect(t, natsURL)}
		for round := range 5 {
			f := mustIssue(t, conns[0], "user-3", "web-app")
			child := requireOneChild(t, conns[0], f.FamilyID, concurrentRefresh(t, conns, f.RefreshToken, "web-app", 32))
			if round == 0 {
				mustRefresh(t, conns[1], child, "web-app")
			}
		}
	})
}

// TestFenceBetweenInstances makes one instance decide on a stale cached state:
// only the expected-last-subject-sequence fence stops it from forking the chain.
func TestFenceBetweenInstances(t *testing.T) {
	eachProtection(t, testFenceBetweenInstances)
}

func testFenceBetweenInstances(t *testing.T, configure func(*Config)) {
	natsURL, apps := mustInstances(t, 2, configure)
	nc := eventstest.MustConnect(t, natsURL)
	// Issue through instance 0's own service so its writer caches the family.
	issued, err := apps[0].api.Tokens.Issue(t.Context(), eventsIssue("user-4", "web-app"))
	if err != nil {
		t.Fatal(err)
	}
	viaOne, err := apps[1].api.Tokens.Refresh(t.Context(), eventsRefresh(issued.Token.Value(), "web-app"))
	if err != nil {
		t.Fatal(err)
	}
	viaZero, err := apps[0].api.Tokens.Refresh(t.Context(), eventsRefresh(issued.Token.Value(), "web-app"))
	if err != nil {
		t.Fatal(err)
	}
	if viaZero.Token.Value() != viaOne.Token.Value() {
		t.Fatal("the instance with a stale state minted a second child")
	}
	// Its reload after the fence (from the stream, sealed under
	// protection) still knows whose family it is: access tokens name it.
	if viaZero.Family.Subject != "user-4" || viaOne.Family.Subject != "user-4" {
		t.Fatalf("subjects after the reload: %q and %q", viaZero.Family.Subject, viaOne.Family.Subject)
	}
	c := countTypes(familyEvents(t, nc, issued.Family.ID))
	if c["token.rotated"] != 1 || c["token.reused"] != 1 {
		t.Fatalf("events %v; want one rotation and one reuse", c)
	}
}

func TestLostReplyRetriedGetsSameChild(t *testing.T) {
	eachProtection(t, testLostReplyRetriedGetsSameChild)
}

func testLostReplyRetriedGetsSameChild(t *testing.T, configure func(*Config)) {
	ns := eventstest.MustJetStream(t)
	cfg := testConfig(t)
	cfg.NATSURL = ns.ClientURL()
	configure(&cfg)
	app := MustApp(t, cfg, nil)
	nc := eventstest.MustConnect(t, ns.ClientURL())
	f := mustIssue(t, nc, "user-5", "web-app")
	first := mustRefresh(t, nc, f.RefreshToken, "web-app")

	retry := mustRefresh(t, nc, f.RefreshToken, "web-app")
	if retry.RefreshToken != first.RefreshToken || retry.Seq <= first.Seq {
		t.Fatalf("retry got another child or an old seq: %d vs %d", retry.Seq, first.Seq)
	}
	// A new instance with nothing cached (a restart) still finds the same child.
	app.Stop()
	MustApp(t, cfg, nil)
	again := mustRefresh(t, nc, f.RefreshToken, "web-app")
	if again.RefreshToken != first.RefreshToken {
		t.Fatal("retry after a restart got another child")
	}
	mustRefresh(t, nc, again.RefreshToken, "web-app")
}

func TestReplayAfterIntervalRevokesFamily(t *testing.T) {
	eachProtection(t, testReplayAfterIntervalRevokesFamily)
}

func testReplayAfterIntervalRevokesFamily(t *testing.T, configure func(*Config)) {
	cfg := testConfig(t)
	cfg.ReuseInterval = 300 * time.Millisecond
	configure(&cfg)
	app := MustApp(t, cfg, nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	f := mustIssue(t, nc, "user-6", "web-app")
	current := mustRefresh(t, nc, f.RefreshToken, "web-app")
	time.Sleep(cfg.ReuseInterval + 100*time.Millisecond)

	replay := refresh(t, nc, f.RefreshToken, "web-app")
	wantError(t, replay, "invalid_grant")
	dead := refresh(t, nc, current.RefreshToken, "web-app")
	wantError(t, dead, "invalid_grant")
	if replay.err.Description != dead.err.Description {
		t.Errorf("invalid_grant descriptions differ by cause: %q vs %q", replay.err.Description, dead.err.Description)
	}

	evs := familyEvents(t, nc, f.FamilyID)
	var replayAt, revokedAt int
	for i, e := range evs {
		switch e.Type {
		case "token.replay_detected":
			replayAt = i
		case "family.revoked":
			revokedAt = i
			if e.Reason != "replay_detected" || e.Generation != 2 {
				t.Errorf("family.revoked reason %q generation %d", e.Reason, e.Generation)
			}
		}
	}
	if replayAt == 0 || revokedAt != replayAt+1 || evs[revokedAt].Seq != evs[replayAt].Seq+1 {
		t.Fatalf("replay_detected and family.revoked must be adjacent: %v", countTypes(evs))
	}
	if evs[len(evs)-1].Type != "refresh.rejected" || evs[len(evs)-1].Reason != "family_revoked" {
		t.Errorf("the current token after replay: %s/%s", evs[len(evs)-1].Type, evs[len(evs)-1].Reason)
	}
}

func TestForeignClientNeverRevokesOwner(t *testing.T) {
	cfg := testConfig(t)
	cfg.ReuseInterval = 200 * time.Millisecond
	app := MustApp(t, cfg, nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	f := mustIssue(t, nc, "user-7", "web-app")

	wantError(t, refresh(t, nc, f.RefreshToken, "evil-client"), "invalid_grant")
	owner := mustRefresh(t, nc, f.RefreshToken, "web-app")
	wantError(t, refresh(t, nc, f.RefreshToken, "evil-client"), "invalid_grant")
	time.Sleep(cfg.ReuseInterval + 100*time.Millisecond)
	wantError(t, refresh(t, nc, f.RefreshToken, "evil-client"), "invalid_grant")
	wantError(t, refresh(t, nc, owner.RefreshToken, "evil-client"), "invalid_grant")
	mustRefresh(t, nc, owner.RefreshToken, "web-app")

	mismatches := 0
	for _, e := range familyEvents(t, nc, f.FamilyID) {
		if e.Type == "family.revoked" || e.Type == "token.replay_detected" {
			t.Fatalf("a foreign presentation produced %s", e.Type)
		}
		if e.Type == "refresh.rejected" && e.Reason == "client_mismatch" {
			mismatches++
		}
	}
	if mismatches != 4 {
		t.Fatalf("%d client_mismatch rejections, want 4", mismatches)
	}
}

func TestScopesAndAudiences(t *testing.T) {
	app := MustApp(t, testConfig(t), nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	f := mustIssue(t, nc, "user-8", "web-app")
	down := "api:read"
	r := call(t, nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: f.RefreshToken, ClientID: "web-app", Scope: &down, Audience: "https://billing.example.com"})
	if r.errCode != "" || r.token.Scope != "api:read" {
		t.Fatalf("down-scope: %s", r.raw)
	}
	token := r.token.RefreshToken
	up := "api:read admin"
	wantError(t, call(t, nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: token, ClientID: "web-app", Scope: &up}), "invalid_scope")
	wantError(t, call(t, nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: token, ClientID: "web-app", Audience: "https://evil.example.com"}), "invalid_target")
	full := mustRefresh(t, nc, token, "web-app")
	if full.Scope != "openid api:read api:write" {
		t.Fatalf("the grant changed by refreshing: %q", full.Scope)
	}
}

func TestRevoke(t *testing.T) {
	app := MustApp(t, testConfig(t), nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	revoke := func(req wire.RevokeRequest) wire.RevokeReply {
		t.Helper()
		r := call(t, nc, "tokens.cmd.revoke", req)
		if r.errCode != "" {
			t.Fatalf("revoke: %s", r.raw)
		}
		var out wire.RevokeReply
		if err := jsonUnmarshal(r.raw, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	byFamily := mustIssue(t, nc, "user-9", "web-app")
	if got := revoke(wire.RevokeRequest{FamilyID: &byFamily.FamilyID, Reason: "user_disabled"}); got.RevokedFamilies != 1 || got.Seq == 0 {
		t.Fatalf("revoke by family: %+v", got)
	}
	if got := revoke(wire.RevokeRequest{FamilyID: &byFamily.FamilyID}); got.RevokedFamilies != 0 {
		t.Fatalf("second revoke: %+v", got)
	}
	wantError(t, refresh(t, nc, byFamily.RefreshToken, "web-app"), "invalid_grant")
	evs := familyEvents(t, nc, byFamily.FamilyID)
	if evs[1].Type != "family.revoked" || evs[1].Reason != "user_disabled" {
		t.Fatalf("revoked event: %s %q", evs[1].Type, evs[1].Reason)
	}

	byToken := mustIssue(t, nc, "user-9", "web-app")
	if got := revoke(wire.RevokeRequest{RefreshToken: &byToken.RefreshToken}); got.RevokedFamilies != 1 {
		t.Fatalf("revoke by token: %+v", got)
	}
	garbage := "rt1.nope"
	unknown := "no-such-family"
	for _, req := range []wire.RevokeRequest{{RefreshToken: &garbage}, {FamilyID: &unknown}} {
		if got := revoke(req); got.RevokedFamilies != 0 {
			t.Fatalf("revoke of nothing: %+v", got)
		}
	}
	wantError(t, call(t, nc, "tokens.cmd.revoke", wire.RevokeRequest{FamilyID: &unknown, RefreshToken: &garbage}), "invalid_request")
	wantError(t, call(t, nc, "tokens.cmd.revoke", []byte(`{}`)), "invalid_request")
	bad := "a.b"
	wantError(t, call(t, nc, "tokens.cmd.revoke", wire.RevokeRequest{FamilyID: &bad}), "invalid_request")
	// An empty selector is refused, naming it, and revokes nothing.
	untouched := mustIssue(t, nc, "user-untouched", "web-app")
	for _, field := range []string{"refresh_token", "family_id", "subject", "client_id"} {
		r := call(t, nc, "tokens.cmd.revoke", []byte(`{"`+field+`":""}`))
		wantError(t, r, "invalid_request")
		if r.err.Description != field+" must not be empty" {
			t.Fatalf("empty %s: %q", field, r.err.Description)
		}
	}
	mustRefresh(t, nc, untouched.RefreshToken, "web-app")
	// A well-formed id nobody issued counts nothing, like an unknown token.
	if got := revoke(wire.RevokeRequest{FamilyID: ptr("AAAAAAAAAAAAAAAAAAAAAA")}); got.RevokedFamilies != 0 {
		t.Fatalf("revoke of an unknown family: %+v", got)
	}
}

func ptr[T any](v T) *T { return &v }

func TestBadInputIsRefused(t *testing.T) {
	app := MustApp(t, testConfig(t), nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	cases := []struct {
		subject string
		body    string
	}{
		{"tokens.cmd.issue", `not json`},
		{"tokens.cmd.issue", ``},
		{"tokens.cmd.issue", `{"subject":"u","client_id":"c"} {}`},
		{"tokens.cmd.issue", `{"subject":"u","client_id":"c","admin":true}`},
		{"tokens.cmd.issue", `{"subject":"","client_id":"c"}`},
		{"tokens.cmd.issue", `{"subject":"u\u0000","client_id":"c"}`},
		{"tokens.cmd.issue", "{\"subject\":\"u\xff\",\"client_id\":\"c\"}"},
		{"tokens.cmd.issue", `{"subject":"` + strings.Repeat("u", 257) + `","client_id":"c"}`},
		{"tokens.cmd.issue", `{"subject":"u","client_id":"c","scope":"a\"b"}`},
		{"tokens.cmd.issue", `{"subject":"u","client_id":"c","scope":"` + manyScopes(65) + `"}`},
		{"tokens.cmd.issue", `{"subject":"u","client_id":"c","audience":"not-a-list"}`},
		{"tokens.cmd.issue", `{"subject":"u","client_id":"c","context":{"ip":{"nested":1}}}`},
		{"tokens.cmd.issue", `{"subject":"u","client_id":"c","context":` + strings.Repeat(`{"a":`, 200) + `1` + strings.Repeat(`}`, 200) + `}`},
		{"tokens.cmd.issue", `{"subject":"u","client_id":"c","x":"` + strings.Repeat("x", wire.MaxRequestBytes) + `"}`},
		{"tokens.cmd.refresh", `{"client_id":"c"}`},
		{"tokens.cmd.refresh", `{"refresh_token":"rt1.x","client_id":""}`},
		{"tokens.cmd.revoke", `{"family_id":"f","reason":"` + strings.Repeat("r", 257) + `"}`},
		{"tokens.cmd.issue", `{"subject":"u","client_id":"c","context":{"a":"` + strings.Repeat("a", 512) + `","b":"` + strings.Repeat("b", 512) + `"}}`},
		{"tokens.query.introspect", `{}`},
		{"tokens.query.introspect", `{"refresh_token":""}`},
	}
	for _, c := range cases {
		wantError(t, call(t, nc, c.subject, []byte(c.body)), "invalid_request")
	}
	wantError(t, call(t, nc, "tokens.cmd.refresh", []byte(`{"refresh_token":"rt1.forged.1.k.AAAA.BBBB","client_id":"c"}`)), "invalid_grant")
}

func manyScopes(n int) string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("scope-%d", i)
	}
	return strings.Join(s, " ")
}
