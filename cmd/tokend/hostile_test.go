package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
)

// TestInvalidGrantIsOneAnswer: whatever made a refresh token unusable, the
// caller gets byte-for-byte the same reply, so it is no oracle for which
// check failed; the cause is in the audit trail only.
func TestInvalidGrantIsOneAnswer(t *testing.T) {
	cfg := testConfig(t)
	cfg.ReuseInterval = 200 * time.Millisecond
	cfg.IdleTTL = 600 * time.Millisecond
	app := MustApp(t, cfg, nil)
	nc := eventstest.MustConnect(t, app.NATSURL())

	replayed := mustIssue(t, nc, "user-1", "web-app")
	mustRefresh(t, nc, replayed.RefreshToken, "web-app")
	revoked := mustIssue(t, nc, "user-2", "web-app")
	call(t, nc, "tokens.cmd.revoke", wire.RevokeRequest{FamilyID: &revoked.FamilyID})
	foreign := mustIssue(t, nc, "user-3", "web-app")
	expired := mustIssue(t, nc, "user-4", "web-app")
	time.Sleep(cfg.IdleTTL)
	forged := []byte(foreign.RefreshToken)
	forged[len(forged)-2] ^= 1 // a flipped MAC bit

	causes := map[string]*nats.Msg{}
	for cause, req := range map[string]wire.RefreshRequest{
		"garbage":      {RefreshToken: "not-a-token", ClientID: "web-app"},
		"forged MAC":   {RefreshToken: string(forged), ClientID: "web-app"},
		"foreign":      {RefreshToken: foreign.RefreshToken, ClientID: "other-app"},
		"revoked":      {RefreshToken: revoked.RefreshToken, ClientID: "web-app"},
		"replayed":     {RefreshToken: replayed.RefreshToken, ClientID: "web-app"},
		"expired":      {RefreshToken: expired.RefreshToken, ClientID: "web-app"},
		"killed by it": {RefreshToken: replayed.RefreshToken, ClientID: "web-app"},
	} {
		data, _ := json.Marshal(req)
		msg, err := nc.Request("tokens.cmd.refresh", data, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		causes[cause] = msg
	}
	want := causes["garbage"]
	if !strings.Contains(string(want.Data), `"invalid_grant"`) {
		t.Fatalf("garbage: %s", want.Data)
	}
	for cause, msg := range causes {
		if !bytes.Equal(msg.Data, want.Data) || msg.Header.Get("Nats-Service-Error-Code") != want.Header.Get("Nats-Service-Error-Code") ||
			msg.Header.Get("Nats-Service-Error") != want.Header.Get("Nats-Service-Error") {
			t.Errorf("%s answers %s %v, garbage answers %s %v", cause, msg.Data, msg.Header, want.Data, want.Header)
		}
	}
}

// TestHostileInputChangesNothing: oversized, nested, malformed or
// out-of-range input is refused with invalid_request and stores nothing;
// the service keeps working.
func TestHostileInputChangesNothing(t *testing.T) {
	app := MustApp(t, testConfig(t), nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	f := mustIssue(t, nc, "user-1", "web-app")
	before := streamLastSeq(t, nc)

	audiences := make([]string, 17)
	for i := range audiences {
		audiences[i] = "https://api" + strings.Repeat("x", i) + ".example.com"
	}
	tooManyAudiences, _ := json.Marshal(map[string]any{"subject": "u", "client_id": "c", "audience": audiences})
	deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	for _, c := range []struct{ subject, body string }{
		{"tokens.cmd.issue", string(tooManyAudiences)},
		{"tokens.cmd.issue", `{"subject":"u","client_id":"c","audience":["https://` + strings.Repeat("a", 600) + `"]}`},
		{"tokens.cmd.issue", `{"subject":"u","client_id":"c","scope":"` + strings.Repeat("s", 129) + `"}`},
		{"tokens.cmd.issue", `{"subject":"u","client_id":"c","context":{"ip":"1.2.3.4\u001b[2J"}}`},
		{"tokens.cmd.issue", "{\"subject\":\"u\",\"client_id\":\"c\",\"context\":{\"\xc3\x28\":\"x\"}}"},
		{"tokens.cmd.issue", `{"subject":"u\u202eevil","client_id":"c"}`},
		{"tokens.cmd.issue", `{"subject":"u","client_id":"c","context":` + deep + `}`},
		{"tokens.cmd.issue", deep},
		{"tokens.cmd.issue", `{"subject":123,"client_id":"c"}`},
		{"tokens.cmd.issue", `{"subject":"u","client_id":"c","subject":"v","extra":1}`},
		{"tokens.cmd.refresh", `{"refresh_token":"` + f.RefreshToken + `","client_id":"web-app","scope":"` + manyScopes(65) + `"}`},
		{"tokens.cmd.refresh", `{"refresh_token":"` + f.RefreshToken + `","client_id":"web-app","audience":"bad aud"}`},
		{"tokens.cmd.refresh", `{"refresh_token":"` + f.RefreshToken + `","client_id":"web-app","context":{"k":"` + strings.Repeat("v", 513) + `"}}`},
		{"tokens.cmd.refresh", `{"refresh_token":"` + strings.Repeat("r", 70000) + `","client_id":"web-app"}`},
		{"tokens.cmd.revoke", `{"family_id":"` + f.FamilyID + `","reason":"` + strings.Repeat("r", 257) + `"}`},
		{"tokens.cmd.revoke", `{"family_id":"` + f.FamilyID + `","reason":"line\nbreak"}`},
		{"tokens.cmd.revoke", `{"family_id":"` + f.FamilyID + `","subject":"user-1"}`},
		{"tokens.cmd.revoke", `{"subject":"` + strings.Repeat("u", 257) + `"}`},
		{"tokens.query.audit", `{"types":[` + strings.Repeat(`"token.issued",`, 20) + `"token.issued"]}`},
		{"tokens.query.audit", `{"subject":"` + strings.Repeat("u", 300) + `"}`},
	} {
		wantError(t, call(t, nc, c.subject, []byte(c.body)), "invalid_request")
	}
	if after := streamLastSeq(t, nc); after != before {
		t.Fatalf("refused input stored %d events", after-before)
	}
	mustRefresh(t, nc, f.RefreshToken, "web-app")
}

func streamLastSeq(t *testing.T, nc *nats.Conn) uint64 {
	t.Helper()
	js, _ := jetstream.New(nc)
	s, err := js.Stream(context.Background(), events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().State.LastSeq
}

// TestForgedEventIsSkipped: a message on an event subject that is no
// tokend event (a misconfigured publisher) is counted, logged without its
// payload and skipped; the projector goes on with the events after it.
func TestForgedEventIsSkipped(t *testing.T) {
	logs := &syncBuffer{}
	app := MustApp(t, testConfig(t), logs)
	nc := eventstest.MustConnect(t, app.NATSURL())
	js, _ := jetstream.New(nc)
	const secret = "rt1.leaked-secret-in-a-forged-message"
	for _, body := range []string{`{"type":"token.issued","refresh_token":"` + secret + `"}`, `not json ` + secret} {
		if _, err := js.Publish(context.Background(), "tokens.evt.forged", []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	f := mustIssue(t, nc, "user-after", "web-app")
	var view wire.FamilyView
	r := call(t, nc, "tokens.query.family", wire.FamilyRequest{FamilyID: f.FamilyID, MinSeq: f.Seq})
	if r.errCode != "" || json.Unmarshal(r.raw, &view) != nil || view.Generation != 1 {
		t.Fatalf("the projector stopped at the forged messages: %s", r.raw)
	}
	if got := parseMetrics(t, scrape(t, app)).value("tokend_projection_skipped_total"); got != 2 {
		t.Fatalf("tokend_projection_skipped_total = %v, want 2", got)
	}
	if !strings.Contains(logs.String(), "skipping malformed message") || strings.Contains(logs.String(), secret) {
		t.Fatalf("want a log line per skipped message without its payload:\n%s", logs)
	}
	audit := call(t, nc, "tokens.query.audit", wire.AuditRequest{FamilyID: "forged"})
	if strings.Contains(string(audit.raw), secret) || strings.Contains(string(audit.raw), `"seq"`) {
		t.Fatalf("the forged messages reached the audit trail: %s", audit.raw)
	}
}
