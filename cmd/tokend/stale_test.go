package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
)

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
