package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/ratelimit"
)

// TestRefreshOfAGoneClientIsNotRun: a token request whose client went away
// before the refresh started is not run, so the client's retry of the
// same token rotates it instead of being a replay (the reuse interval is
// off here, as it would be over by the time a late refresh ran). A client
// that goes away once the refresh started does not cut it short: it is
// stored, as its answer says.
func TestRefreshOfAGoneClientIsNotRun(t *testing.T) {
	e := mustOAuthEnv(t, func(c *Config) { c.ReuseInterval = 0 })
	f := e.issue(t, "user-gone", "web")
	// The handler is called on this goroutine with the request's context
	// in hand, so a client's going is a cancellation, not a race.
	serve := func(ctx context.Context, token string) (int, map[string]any) {
		form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {token}}
		req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/oauth2/token", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth("web", e.secret)
		rec := httptest.NewRecorder()
		e.app.oauth.Handler.ServeHTTP(rec, req)
		var body map[string]any
		json.Unmarshal(rec.Body.Bytes(), &body)
		return rec.Code, body
	}

	gone, leave := context.WithCancel(context.Background())
	leave()
	if status, _ := serve(gone, f.RefreshToken); status == http.StatusOK {
		t.Fatal("a refresh for a client that went away was answered")
	}
	if n := countTypes(familyEvents(t, e.nc, f.FamilyID))["token.rotated"]; n != 0 {
		t.Fatalf("%d token.rotated for a client that went away", n)
	}
	if got := metricsAt(t, e.app.HTTPAddr()).value("tokend_requests_dropped_total", "transport", "http", "endpoint", "token", "reason", "caller_gone"); got != 1 {
		t.Fatalf("caller_gone drops = %v, want 1", got)
	}
	status, body := serve(context.Background(), f.RefreshToken)
	if status != http.StatusOK {
		t.Fatalf("the retry: %d %v", status, body["error_description"])
	}

	// The refresh rate limiter reads the clock between deciding and
	// storing: the client goes away right there.
	during, leaveDuring := context.WithCancel(context.Background())
	e.app.api.Tokens.RefreshLimit = ratelimit.NewKeyedLimiter(1000, 1000, 16, func() time.Time {
		leaveDuring()
		return time.Now()
	})
	if status, body := serve(during, body["refresh_token"].(string)); status != http.StatusOK {
		t.Fatalf("a refresh cut short when its client went away: %d %v", status, body["error_description"])
	}
	types := countTypes(familyEvents(t, e.nc, f.FamilyID))
	if types["token.rotated"] != 2 || types["token.replay_detected"] != 0 {
		t.Fatalf("events %v, want two rotations and no replay", types)
	}
}

// timedCall sends a request with a Tokend-Timeout-Ms header.
func timedCall(t *testing.T, nc *nats.Conn, subject string, req any, timeout string) reply {
	t.Helper()
	data, _ := json.Marshal(req)
	msg := nats.NewMsg(subject)
	msg.Data = data
	msg.Header.Set(wire.HeaderTimeout, timeout)
	m, err := nc.RequestMsg(msg, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	r := reply{raw: m.Data, errCode: m.Header.Get("Nats-Service-Error-Code"), errText: m.Header.Get("Nats-Service-Error")}
	if r.errCode != "" {
		json.Unmarshal(m.Data, &r.err)
	} else {
		json.Unmarshal(m.Data, &r.token)
	}
	return r
}

// TestNATSRefreshPastItsCallersTimeoutIsNotRun: a refresh whose caller
// has no time left is answered temporarily_unavailable without rotating,
// and counted; with time left it rotates.
func TestNATSRefreshPastItsCallersTimeoutIsNotRun(t *testing.T) {
	app := MustApp(t, testConfig(t), nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	f := mustIssue(t, nc, "user-late", "web-app")
	req := wire.RefreshRequest{RefreshToken: f.RefreshToken, ClientID: "web-app"}

	wantError(t, timedCall(t, nc, "tokens.cmd.refresh", req, "0"), "temporarily_unavailable")
	if n := countTypes(familyEvents(t, nc, f.FamilyID))["token.rotated"]; n != 0 {
		t.Fatalf("%d token.rotated for a caller out of time", n)
	}
	if got := scrapeValue(t, app, "tokend_requests_dropped_total", "transport", "nats", "endpoint", "refresh", "reason", "caller_deadline"); got != 1 {
		t.Fatalf("caller_deadline drops = %v, want 1", got)
	}
	if r := timedCall(t, nc, "tokens.cmd.refresh", req, "5000"); r.errCode != "" {
		t.Fatalf("a refresh with time left: %s", r.raw)
	}
	if n := countTypes(familyEvents(t, nc, f.FamilyID))["token.rotated"]; n != 1 {
		t.Fatalf("%d token.rotated, want 1", n)
	}
	wantError(t, timedCall(t, nc, "tokens.cmd.refresh", req, "5s"), "invalid_request")
}

func scrapeValue(t *testing.T, app *App, name string, labels ...string) float64 {
	t.Helper()
	return parseMetrics(t, scrape(t, app)).value(name, labels...)
}
