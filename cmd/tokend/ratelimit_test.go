package main

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
)

// TestRateLimits: past its burst a family's rotations, and a client's
// issues, are answered temporarily_unavailable with retry_after_ms and
// counted; parallel refreshes of the just-rotated token are not limited.
func TestRateLimits(t *testing.T) {
	cfg := testConfig(t)
	cfg.RefreshRate, cfg.RefreshBurst = 0.01, 2
	cfg.IssueRate, cfg.IssueBurst = 0.01, 3
	app := MustApp(t, cfg, nil)
	nc := eventstest.MustConnect(t, app.NATSURL())

	f := mustIssue(t, nc, "user-1", "web-app")
	gen2 := mustRefresh(t, nc, f.RefreshToken, "web-app")
	gen3 := mustRefresh(t, nc, gen2.RefreshToken, "web-app")
	limited := refresh(t, nc, gen3.RefreshToken, "web-app")
	wantError(t, limited, "temporarily_unavailable")
	if limited.err.RetryAfterMs <= 0 || limited.errCode != "503" {
		t.Fatalf("a rate-limited refresh must say when to retry: %s (%s)", limited.raw, limited.errCode)
	}
	// Lost replies and parallel refreshes of gen2 still get gen3.
	requireOneChildOf := func(replies []reply) {
		t.Helper()
		for _, r := range replies {
			if r.errCode != "" || r.token.RefreshToken != gen3.RefreshToken {
				t.Fatalf("the reuse path was limited: %s", r.raw)
			}
		}
	}
	requireOneChildOf(concurrentRefresh(t, []*nats.Conn{nc}, gen2.RefreshToken, "web-app", 16))

	mustIssue(t, nc, "user-2", "web-app")
	mustIssue(t, nc, "user-3", "web-app")
	wantError(t, call(t, nc, "tokens.cmd.issue", wire.IssueRequest{Subject: "user-4", ClientID: "web-app"}), "temporarily_unavailable")
	mustIssue(t, nc, "user-4", "mobile-app") // another client has its own budget

	m := parseMetrics(t, scrape(t, app))
	if got := m.value("tokend_rate_limited_total", "limit", "refresh_per_family"); got != 1 {
		t.Errorf("refresh limit hits = %v, want 1", got)
	}
	if got := m.value("tokend_rate_limited_total", "limit", "issue_per_client"); got != 1 {
		t.Errorf("issue limit hits = %v, want 1", got)
	}
	if got := m.value("tokend_commands_total", "command", "refresh", "outcome", "temporarily_unavailable"); got != 1 {
		t.Errorf("rate-limited refreshes counted as %v temporarily_unavailable answers", got)
	}
}

// TestRateLimitsOff: a rate of 0 switches a limit off.
func TestRateLimitsOff(t *testing.T) {
	cfg := testConfig(t)
	cfg.RefreshRate, cfg.IssueRate = 0, 0
	cfg.RefreshBurst, cfg.IssueBurst = 1, 1
	app := MustApp(t, cfg, nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	token := mustIssue(t, nc, "user-1", "web-app").RefreshToken
	mustIssue(t, nc, "user-2", "web-app")
	for range 30 {
		token = mustRefresh(t, nc, token, "web-app").RefreshToken
	}
}
