package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/registry"
	"github.com/tokend/tokend/tokens"
)

// scrape returns the raw /metrics exposition of an app.
func scrape(t *testing.T, app *App) []byte {
	t.Helper()
	resp, err := http.Get("http://" + app.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return body
}

type metricSet map[string]*dto.MetricFamily

func parseMetrics(t *testing.T, raw []byte) metricSet {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
	return families
}

// value returns the sample of name whose labels include every given pair
// (counter, gauge, or a histogram's count); -1 if there is none.
func (m metricSet) value(name string, labels ...string) float64 {
	mf := m[name]
	if mf == nil {
		return -1
	}
next:
	for _, metric := range mf.Metric {
		have := map[string]string{}
		for _, l := range metric.Label {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case metric.Counter != nil:
			return metric.Counter.GetValue()
		case metric.Gauge != nil:
			return metric.Gauge.GetValue()
		case metric.Histogram != nil:
			return float64(metric.Histogram.GetSampleCount())
		}
	}
	return -1
}

// TestMetricsCountWhatHappened runs one of every outcome and reads the
// counters back from /metrics, then has promtool lint the live exposition.
func TestMetricsCountWhatHappened(t *testing.T) {
	cfg := testConfig(t)
	cfg.ReuseInterval = 300 * time.Millisecond
	app := MustApp(t, cfg, nil)
	nc := eventstest.MustConnect(t, app.NATSURL())

	f := mustIssue(t, nc, "user-metrics", "web-app")
	child := mustRefresh(t, nc, f.RefreshToken, "web-app")
	mustRefresh(t, nc, f.RefreshToken, "web-app") // reuse inside the interval
	wantError(t, refresh(t, nc, child.RefreshToken, "other-client"), "invalid_grant")
	up := "admin"
	wantError(t, call(t, nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: child.RefreshToken, ClientID: "web-app", Scope: &up}), "invalid_scope")
	wantError(t, call(t, nc, "tokens.cmd.issue", []byte(`{}`)), "invalid_request")
	time.Sleep(cfg.ReuseInterval + 100*time.Millisecond)
	wantError(t, refresh(t, nc, f.RefreshToken, "web-app"), "invalid_grant") // replay: revokes

	g := mustIssue(t, nc, "user-metrics", "web-app")
	bySubject := "user-metrics"
	if r := call(t, nc, "tokens.cmd.revoke", wire.RevokeRequest{Subject: &bySubject, Reason: "user_disabled"}); r.errCode != "" {
		t.Fatalf("revoke: %s", r.raw)
	}
	h := mustIssue(t, nc, "user-metrics-2", "web-app")
	free := "Free text, not a label!"
	last := revokeReply(t, nc, wire.RevokeRequest{FamilyID: &h.FamilyID, Reason: free}).Seq
	// Waits for the read model to hold the last event, so the projection's
	// gauges are read at rest.
	call(t, nc, "tokens.query.family", map[string]any{"family_id": g.FamilyID, "min_seq": last})

	raw := scrape(t, app)
	m := parseMetrics(t, raw)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"tokend_commands_total", []string{"command", "issue", "outcome", "ok"}, 3},
		{"tokend_commands_total", []string{"command", "issue", "outcome", "invalid_request"}, 1},
		{"tokend_commands_total", []string{"command", "refresh", "outcome", "ok"}, 2},
		{"tokend_commands_total", []string{"command", "refresh", "outcome", "invalid_grant"}, 2},
		{"tokend_commands_total", []string{"command", "refresh", "outcome", "invalid_scope"}, 1},
		{"tokend_commands_total", []string{"command", "revoke", "outcome", "ok"}, 2},
		{"tokend_command_duration_seconds", []string{"command", "refresh"}, 5},
		{"tokend_events_appended_total", []string{"type", "token.issued"}, 3},
		{"tokend_events_appended_total", []string{"type", "token.rotated"}, 1},
		{"tokend_events_appended_total", []string{"type", "token.reused"}, 1},
		{"tokend_events_appended_total", []string{"type", "refresh.rejected"}, 2},
		{"tokend_events_appended_total", []string{"type", "token.replay_detected"}, 1},
		{"tokend_events_appended_total", []string{"type", "family.revoked"}, 3},
		{"tokend_replays_detected_total", nil, 1},
		{"tokend_reuse_interval_hits_total", nil, 1},
		{"tokend_families_revoked_total", []string{"reason", "replay_detected"}, 1},
		{"tokend_families_revoked_total", []string{"reason", "user_disabled"}, 1},
		{"tokend_families_revoked_total", []string{"reason", "other"}, 1},
		{"tokend_refresh_rejected_total", []string{"reason", "client_mismatch"}, 1},
		{"tokend_refresh_rejected_total", []string{"reason", "invalid_scope"}, 1},
		{"tokend_queries_total", []string{"query", "family", "outcome", "ok"}, 1},
		{"tokend_projection_applied_sequence", nil, float64(last)},
		{"tokend_projection_lag_events", nil, 0},
		{"tokend_active_families", nil, 0},
		{"tokend_nats_connected", nil, 1},
		{"tokend_build_info", nil, 1},
	} {
		if got := m.value(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if m.value("tokend_projection_events_applied_total") < float64(h.Seq) || m.value("tokend_projection_batch_duration_seconds") < 1 {
		t.Error("projection batches are not measured")
	}
	for _, secret := range []string{"user-metrics", "web-app", f.FamilyID, f.RefreshToken, child.RefreshToken, free} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("/metrics holds %q: ids and tokens must never be label values", secret)
		}
	}
	promtool(t, raw, "check", "metrics")
}

// TestFreshMetricsHaveFixedSeries: the series whose label values are
// known in advance are on /metrics at 0 before anything happened, so
// dashboards and alerts (rate(), increase()) see them from the start.
func TestFreshMetricsHaveFixedSeries(t *testing.T) {
	m := parseMetrics(t, scrape(t, MustApp(t, testConfig(t), nil)))
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{"tokend_rate_limited_total", []string{"limit", tokens.LimitRefreshPerFamily}},
		{"tokend_rate_limited_total", []string{"limit", tokens.LimitIssuePerClient}},
		{"tokend_rate_limited_total", []string{"limit", tokens.LimitForeignPerClient}},
		{"tokend_refresh_rejected_total", []string{"reason", domain.ReasonClientMismatch}},
		{"tokend_refresh_rejected_total", []string{"reason", domain.ReasonInvalidTarget}},
		{"tokend_client_registry_changes_total", []string{"action", registry.ClientSecretRotated}},
		{"tokend_queries_total", []string{"query", "audit", "outcome", "ok"}},
		{"tokend_query_duration_seconds", []string{"query", "introspect"}},
		{"tokend_keys_revoked_total", []string{"kind", keys.KindSET}},
	} {
		if got := m.value(c.name, c.labels...); got != 0 {
			t.Errorf("%s%v = %v on a fresh tokend, want 0", c.name, c.labels, got)
		}
	}
}

// TestDocsNameEveryMetric: the README's metrics table and the protocol
// reference's list name every tokend_* metric a running tokend exposes.
func TestDocsNameEveryMetric(t *testing.T) {
	m := parseMetrics(t, scrape(t, MustApp(t, testConfig(t), nil)))
	for doc, section := range map[string]string{"../../README.md": "### Metrics, dashboard, alerts", "../../docs/protocol.md": "## 11. Metrics"} {
		text, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		_, table, ok := strings.Cut(string(text), "\n"+section+"\n")
		if !ok {
			t.Fatalf("%s has no section %q", doc, section)
		}
		table, _, _ = strings.Cut(table, "\n#")
		for name := range m {
			if strings.HasPrefix(name, "tokend_") && !regexp.MustCompile("(?m)^\\|.*`"+name+"[`{]").MatchString(table) {
				t.Errorf("%s: %q lists no %s", doc, section, name)
			}
		}
	}
}

// TestMetricsFenceConflict: an instance deciding on a stale cached family
// loses the fence, retries, and counts the conflict.
func TestMetricsFenceConflict(t *testing.T) {
	_, apps := mustInstances(t, 2, nil)
	issued, err := apps[0].api.Tokens.Issue(t.Context(), eventsIssue("user-fence", "web-app"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := apps[1].api.Tokens.Refresh(t.Context(), eventsRefresh(issued.Token.Value(), "web-app")); err != nil {
		t.Fatal(err)
	}
	if _, err := apps[0].api.Tokens.Refresh(t.Context(), eventsRefresh(issued.Token.Value(), "web-app")); err != nil {
		t.Fatal(err)
	}
	if got := parseMetrics(t, scrape(t, apps[0])).value("tokend_fence_conflicts_total"); got != 1 {
		t.Fatalf("tokend_fence_conflicts_total = %v, want 1", got)
	}
	if got := parseMetrics(t, scrape(t, apps[1])).value("tokend_fence_conflicts_total"); got != 0 {
		t.Fatalf("the winner counted %v conflicts", got)
	}
}

// promtool runs Prometheus's own linter with stdin; CI installs it (make
// test), and its absence fails the test rather than skipping it.
func promtool(t *testing.T, stdin []byte, args ...string) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not installed: run the tests with 'make test', which installs Debian's prometheus package")
	}
	cmd := exec.Command(path, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
