package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/registry"
	"github.com/tokend/tokend/signals"
)

// opsDir is the repository's ops/ folder, seen from this package.
const opsDir = "../../ops"

// TestAlertRules runs promtool on the shipped rules and their unit tests.
func TestAlertRules(t *testing.T) {
	dir := filepath.Join(opsDir, "prometheus")
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
		{"check", "config", "prometheus.yml"},
	} {
		path, err := exec.LookPath("promtool")
		if err != nil {
			t.Fatal("promtool is not installed: run the tests with 'make test', which installs Debian's prometheus package")
		}
		cmd := exec.Command(path, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestPrometheusScrapesDashboardAndAlerts starts two tokend instances and a
// real Prometheus scraping them under a steady mixed load, then asks
// Prometheus for every expression of the Grafana dashboard and checks the
// alert rules are loaded, healthy, and that the replay alert fires.
func TestPrometheusScrapesDashboardAndAlerts(t *testing.T) {
	natsURL, apps := mustInstances(t, 2, func(cfg *Config) {
		cfg.ReuseInterval = 0         // every parent presented again is a replay
		cfg.StreamMaxBytes = 64 << 20 // the store-filling panel needs a limit to measure against
	})
	var targets []string
	for _, app := range apps {
		targets = append(targets, strconv.Quote(app.HTTPAddr()))
	}
	// One fence conflict, so its series is not just zero.
	issued, err := apps[0].api.Tokens.Issue(t.Context(), eventsIssue("user-prom", "web-app"))
	if err != nil {
		t.Fatal(err)
	}
	for _, app := range []*App{apps[1], apps[0]} {
		app.api.Tokens.Refresh(t.Context(), eventsRefresh(issued.Token.Value(), "web-app"))
	}

	ssfReceivers(t, apps[0])

	stopLoad := steadyLoad(t, eventstest.MustConnect(t, natsURL))
	defer stopLoad()

	promURL := startPrometheus(t, targets)
	dashboard := dashboardExprs(t)
	eventstest.CheckFor(t, 60*time.Second, 500*time.Millisecond, func() error {
		for _, expr := range dashboard {
			if err := hasNumbers(promURL, expr); err != nil {
				return err
			}
		}
		return nil
	})

	var rules struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name, Health, LastError, Query string
				}
			}
		}
	}
	promGet(t, promURL, "/api/v1/rules", nil, &rules)
	loaded := 0
	for _, g := range rules.Data.Groups {
		for _, r := range g.Rules {
			loaded++
			if r.Health != "ok" || r.LastError != "" {
				t.Errorf("rule %s: health %q, error %q", r.Name, r.Health, r.LastError)
			}
			for _, name := range metricNames(r.Query) {
				if err := hasNumbers(promURL, name); err != nil {
					t.Errorf("rule %s uses %s, which tokend does not export: %v", r.Name, name, err)
				}
			}
		}
	}
	if loaded < 7 {
		t.Fatalf("Prometheus loaded %d rules from ops/prometheus/alerts.yml", loaded)
	}
	eventstest.CheckFor(t, 30*time.Second, 500*time.Millisecond, func() error {
		var alerts struct {
			Data struct {
				Alerts []struct {
					Labels map[string]string
					State  string
				}
			}
		}
		promGet(t, promURL, "/api/v1/alerts", nil, &alerts)
		for _, a := range alerts.Data.Alerts {
			if a.Labels["alertname"] == "TokendReplayDetectionsSpike" && a.State == "firing" {
				return nil
			}
		}
		return fmt.Errorf("TokendReplayDetectionsSpike is not firing: %+v", alerts.Data.Alerts)
	})
}

// ssfReceivers sets up SSF streams for the dashboard's and the alerts'
// series, which the delivery exports per stream: a receiver of every event
// with a push stream to an endpoint that accepts, one that refuses for
// good (RFC 8935 error), and one that is down.
func ssfReceivers(t *testing.T, app *App) {
	t.Helper()
	siem := domain.Client{ID: "siem", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretBasic, Receiver: domain.ReceiverAll}
	if _, err := app.Clients().Put(t.Context(), siem, domain.HashClientSecret("siem-secret"), 0, registry.Actor{By: "test"}); err != nil {
		t.Fatal(err)
	}
	for _, answer := range []func(http.ResponseWriter){
		func(w http.ResponseWriter) { w.WriteHeader(http.StatusAccepted) },
		func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"err":"invalid_audience","description":"not for this receiver"}`)
		},
		func(w http.ResponseWriter) { w.WriteHeader(http.StatusServiceUnavailable) },
	} {
		receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			answer(w)
		}))
		t.Cleanup(receiver.Close)
		push := &signals.Delivery{Method: signals.DeliveryPush, EndpointURL: receiver.URL}
		if _, err := app.api.Streams.Create(t.Context(), signals.NewStream{Receiver: siem.ID, Request: signals.StreamRequest{Delivery: push}}); err != nil {
			t.Fatal(err)
		}
	}
}

// steadyLoad keeps every kind of outcome coming until stopped: rotations,
// a foreign client's refusal, and a replay that revokes the family.
func steadyLoad(t *testing.T, nc *nats.Conn) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		req := func(subject string, body any) {
			data, _ := json.Marshal(body)
			nc.Request(subject, data, 5*time.Second)
		}
		for ctx.Err() == nil {
			var issued struct {
				RefreshToken string `json:"refresh_token"`
			}
			data, _ := json.Marshal(map[string]any{"subject": "user-load", "client_id": "web-app", "scope": "api:read"})
			msg, err := nc.Request("tokens.cmd.issue", data, 5*time.Second)
			if err != nil || json.Unmarshal(msg.Data, &issued) != nil {
				continue
			}
			req("tokens.cmd.refresh", map[string]any{"refresh_token": issued.RefreshToken, "client_id": "web-app"})
			req("tokens.cmd.refresh", map[string]any{"refresh_token": issued.RefreshToken, "client_id": "other-app"})
			req("tokens.cmd.refresh", map[string]any{"refresh_token": issued.RefreshToken, "client_id": "web-app"})
			req("tokens.query.audit", map[string]any{"limit": 1})
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() { cancel(); wg.Wait() }
}

// startPrometheus runs Debian's prometheus on loopback, scraping targets
// every second with the shipped alert rules, and returns its URL.
func startPrometheus(t *testing.T, targets []string) string {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus is not installed: run the tests with 'make test', which installs Debian's prometheus package")
	}
	dir := t.TempDir()
	rules, err := filepath.Abs(filepath.Join(opsDir, "prometheus", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: tokend
    static_configs:
      - targets: [%s]
`, rules, strings.Join(targets, ", "))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	logs := &syncBuffer{}
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	promURL := "http://" + addr
	eventstest.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		resp, err := http.Get(promURL + "/-/ready")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("prometheus not ready: %d\n%s", resp.StatusCode, logs)
		}
		return nil
	})
	return promURL
}

// dashboardExprs returns every query of ops/grafana/tokend.json with the
// Grafana variables resolved as Grafana would for "all instances".
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(opsDir, "grafana", "tokend.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title, Type string
			Targets     []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatal(err)
	}
	resolve := strings.NewReplacer("$__rate_interval", "10s", "$instance", ".*")
	var exprs []string
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue // a row only groups the panels below it
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, resolve.Replace(tg.Expr))
		}
	}
	if len(exprs) < 10 {
		t.Fatalf("only %d dashboard queries", len(exprs))
	}
	return exprs
}

var metricName = regexp.MustCompile(`\b(tokend_[a-z_]+|up)\b`)

// metricNames lists the series names an expression reads.
func metricNames(expr string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range metricName.FindAllString(expr, -1) {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

// hasNumbers evaluates expr now and wants at least one sample that is a
// number (histogram_quantile over no traffic gives NaN, which shows nothing).
func hasNumbers(promURL, expr string) error {
	var res struct {
		Status string
		Error  string
		Data   struct {
			Result []struct {
				Value [2]any
			}
		}
	}
	if err := promQuery(promURL, "/api/v1/query", url.Values{"query": {expr}}, &res); err != nil {
		return err
	}
	if res.Status != "success" {
		return fmt.Errorf("%s: %s", expr, res.Error)
	}
	for _, r := range res.Data.Result {
		if s, ok := r.Value[1].(string); ok {
			if v, err := strconv.ParseFloat(s, 64); err == nil && !math.IsNaN(v) {
				return nil
			}
		}
	}
	return fmt.Errorf("no data yet for %s", expr)
}

func promGet(t *testing.T, promURL, path string, q url.Values, out any) {
	t.Helper()
	if err := promQuery(promURL, path, q, out); err != nil {
		t.Fatal(err)
	}
}

func promQuery(promURL, path string, q url.Values, out any) error {
	resp, err := http.Get(promURL + path + "?" + q.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}
