package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
)

// The audit trail names exactly what happened: who presented a token,
// which generation it was, and from which address.

// auditOf returns a family's audit events once the read model holds its
// stream's last event, over NATS, after checking /v1/audit answers the
// same JSON.
func auditOf(t *testing.T, app *App, familyID string) []map[string]any {
	t.Helper()
	nc := eventstest.MustConnect(t, app.NATSURL())
	stream := familyEvents(t, nc, familyID)
	last := stream[len(stream)-1].Seq
	r := call(t, nc, "tokens.query.audit", wire.AuditRequest{FamilyID: familyID, MinSeq: last})
	if r.errCode != "" {
		t.Fatalf("audit: %s", r.raw)
	}
	var natsPage, httpPage struct{ Events []map[string]any }
	if err := json.Unmarshal(r.raw, &natsPage); err != nil {
		t.Fatal(err)
	}
	code, _, body := httpGet(t, app, fmt.Sprintf("/v1/audit?family_id=%s&min_seq=%d", url.QueryEscape(familyID), last))
	if err := json.Unmarshal(body, &httpPage); code != http.StatusOK || err != nil {
		t.Fatalf("/v1/audit: %d %s", code, body)
	}
	if !reflect.DeepEqual(natsPage.Events, httpPage.Events) || len(natsPage.Events) != len(stream) {
		t.Fatalf("%d events in the stream; tokens.query.audit:\n%v\n/v1/audit:\n%v", len(stream), natsPage.Events, httpPage.Events)
	}
	return natsPage.Events
}

// eventOfType returns the only event of type typ, failing unless there is
// exactly one.
func eventOfType(t *testing.T, evs []map[string]any, typ string) map[string]any {
	t.Helper()
	var found []map[string]any
	for _, e := range evs {
		if e["type"] == typ {
			found = append(found, e)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d %s events in %v", len(found), typ, evs)
	}
	return found[0]
}

// wantFields fails unless ev has each of want's fields with that value
// (JSON numbers as float64; nil: the field must be absent).
func wantFields(t *testing.T, ev map[string]any, want map[string]any) {
	t.Helper()
	for k, w := range want {
		got, ok := ev[k]
		if w == nil && ok || w != nil && !reflect.DeepEqual(got, w) {
			t.Errorf("%s %s = %#v (present %v), want %#v\nevent %v", ev["type"], k, got, ok, w, ev)
		}
	}
}

// auditBoth returns the events of one audit query, asked over NATS as req
// and over HTTP as query, after checking both answer the same JSON.
func auditBoth(t *testing.T, app *App, nc *nats.Conn, req wire.AuditRequest, query string) []map[string]any {
	t.Helper()
	r := call(t, nc, "tokens.query.audit", req)
	if r.errCode != "" {
		t.Fatalf("audit %+v: %s", req, r.raw)
	}
	var natsPage, httpPage struct{ Events []map[string]any }
	if err := json.Unmarshal(r.raw, &natsPage); err != nil {
		t.Fatal(err)
	}
	code, _, body := httpGet(t, app, "/v1/audit?"+query)
	if err := json.Unmarshal(body, &httpPage); code != http.StatusOK || err != nil {
		t.Fatalf("/v1/audit?%s: %d %s", query, code, body)
	}
	if !reflect.DeepEqual(natsPage.Events, httpPage.Events) {
		t.Fatalf("tokens.query.audit %+v:\n%v\n/v1/audit?%s:\n%v", req, natsPage.Events, query, httpPage.Events)
	}
	return natsPage.Events
}

// TestAuditNamesForeignPresenter: a client presenting another client's
// token is audited under the owner's client_id with presented_by the
// presenter and the presenter's own request context, over NATS and HTTP.
// A query by presented_by finds that event, one by client_id the
// presenter's own families, never the one it presented.
func TestAuditNamesForeignPresenter(t *testing.T) {
	app := MustApp(t, testConfig(t), nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	f := mustIssue(t, nc, "user-foreign", "web-app")
	foreign := map[string]string{"ip": "2001:db8::7", "user_agent": "evil/1.0"}
	wantError(t, call(t, nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: f.RefreshToken, ClientID: "evil-app", Context: foreign}),
		"invalid_grant")
	// evil-app's own family, whose token another client presents in turn.
	own := mustIssue(t, nc, "user-evil", "evil-app")
	wantError(t, refresh(t, nc, own.RefreshToken, "other-app"), "invalid_grant")
	mustRefresh(t, nc, f.RefreshToken, "web-app")

	evs := auditOf(t, app, f.FamilyID)
	rejected := eventOfType(t, evs, "refresh.rejected")
	wantFields(t, rejected, map[string]any{
		"reason": "client_mismatch", "client_id": "web-app", "presented_by": "evil-app", "generation": 1.0,
		"presented_generation": 1.0, "context": map[string]any{"ip": "2001:db8::7", "user_agent": "evil/1.0"}})
	wantFields(t, eventOfType(t, evs, "token.issued"), map[string]any{
		"client_id": "web-app", "presented_by": nil, "presented_generation": nil, "context": map[string]any{"ip": "203.0.113.7"}})

	ownEvents := auditOf(t, app, own.FamilyID)
	last := uint64(max(evs[len(evs)-1]["seq"].(float64), ownEvents[len(ownEvents)-1]["seq"].(float64)))
	presented := auditBoth(t, app, nc, wire.AuditRequest{PresentedBy: "evil-app", MinSeq: last},
		fmt.Sprintf("presented_by=evil-app&min_seq=%d", last))
	if len(presented) != 1 || !reflect.DeepEqual(presented[0], rejected) {
		t.Fatalf("presented_by=evil-app: %v, want only %v", presented, rejected)
	}
	if got := auditBoth(t, app, nc, wire.AuditRequest{PresentedBy: "evil-app", ClientID: "web-app", Types: []string{"refresh.rejected"}},
		"presented_by=evil-app&client_id=web-app&type=refresh.rejected"); !reflect.DeepEqual(got, presented) {
		t.Fatalf("presented_by=evil-app with its owner and type: %v, want %v", got, presented)
	}
	if got := auditBoth(t, app, nc, wire.AuditRequest{PresentedBy: "evil-app", Types: []string{"token.issued"}},
		"presented_by=evil-app&type=token.issued"); len(got) != 0 {
		t.Fatalf("presented_by=evil-app, type=token.issued: %v", got)
	}
	byClient := auditBoth(t, app, nc, wire.AuditRequest{ClientID: "evil-app"}, "client_id=evil-app")
	if !reflect.DeepEqual(byClient, ownEvents) {
		t.Fatalf("client_id=evil-app: %v, want its own family's events %v", byClient, ownEvents)
	}
}

// TestAuditNamesReplayedGeneration: a replay says which generation was
// presented beside the family's, and the revocation it causes names none.
func TestAuditNamesReplayedGeneration(t *testing.T) {
	cfg := testConfig(t)
	cfg.ReuseInterval = 0 // the parent is a replay at once
	app := MustApp(t, cfg, nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	f := mustIssue(t, nc, "user-replay", "web-app")
	mustRefresh(t, nc, f.RefreshToken, "web-app")
	wantError(t, call(t, nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: f.RefreshToken, ClientID: "web-app",
		Context: map[string]string{"ip": "198.51.100.9"}}), "invalid_grant")

	evs := auditOf(t, app, f.FamilyID)
	wantFields(t, eventOfType(t, evs, "token.replay_detected"), map[string]any{
		"client_id": "web-app", "presented_by": nil, "generation": 2.0, "presented_generation": 1.0,
		"context": map[string]any{"ip": "198.51.100.9"}})
	wantFields(t, eventOfType(t, evs, "family.revoked"), map[string]any{
		"reason": "replay_detected", "generation": 2.0, "presented_generation": nil})
}

// freeAddr6 returns a free port on the IPv6 loopback. A machine without
// one fails the test: it is never skipped.
func freeAddr6(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatalf("this test needs the IPv6 loopback [::1]: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// postForm posts form to the OAuth listener with the extra headers, and
// HTTP Basic credentials when user is set.
func (e *oauthEnv) postForm(t *testing.T, path string, form url.Values, user, pass string, header http.Header) (int, string) {
	t.Helper()
	code, _, body := e.send(t, path, form, user, pass, header)
	return code, string(body)
}

// TestOAuthRecordsIPv6Peer: over an OAuth listener on [::1], the audit
// trail records the caller as ::1 (it once recorded "").
func TestOAuthRecordsIPv6Peer(t *testing.T) {
	e := mustOAuthEnv(t, func(c *Config) {
		c.OAuthHTTP.Addr = freeAddr6(t)
		c.Issuer = "http://" + c.OAuthHTTP.Addr
	})
	f := e.issue(t, "user-ipv6", "web")
	if code, body := e.postForm(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {f.RefreshToken}},
		"web", e.secret, nil); code != http.StatusOK {
		t.Fatalf("refresh over [::1]: %d %s", code, body)
	}
	wantFields(t, eventOfType(t, auditOf(t, e.app, f.FamilyID), "token.rotated"), map[string]any{
		"context": map[string]any{"ip": "::1", "user_agent": "Go-http-client/1.1"}})
}

// TestOAuthTrustedProxies: behind a proxy in --trusted-proxies the audit
// trail records the forwarded client address as ip and the proxy's as
// proxy_ip, for the owner and for a foreign presenter alike; without the
// flag the header is ignored and the peer recorded.
func TestOAuthTrustedProxies(t *testing.T) {
	forwarded := http.Header{"X-Forwarded-For": {"198.51.100.66, 203.0.113.9"}}
	refresh := func(e *oauthEnv, token string) int {
		code, _ := e.postForm(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {token}},
			"web", e.secret, forwarded)
		return code
	}
	behind := mustOAuthEnv(t, func(c *Config) { c.TrustedProxies = "127.0.0.0/8" })
	f := behind.issue(t, "user-proxied", "web")
	if code, body := behind.postForm(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {f.RefreshToken},
		"client_id": {"spa"}}, "", "", forwarded); code != http.StatusBadRequest {
		t.Fatalf("spa with web's token: %d %s", code, body)
	}
	if code := refresh(behind, f.RefreshToken); code != http.StatusOK {
		t.Fatalf("refresh through the proxy: %d", code)
	}
	evs := auditOf(t, behind.app, f.FamilyID)
	viaProxy := map[string]any{"ip": "203.0.113.9", "proxy_ip": "127.0.0.1", "user_agent": "Go-http-client/1.1"}
	wantFields(t, eventOfType(t, evs, "refresh.rejected"), map[string]any{
		"reason": "client_mismatch", "client_id": "web", "presented_by": "spa", "presented_generation": 1.0, "context": viaProxy})
	wantFields(t, eventOfType(t, evs, "token.rotated"), map[string]any{"client_id": "web", "presented_by": nil, "context": viaProxy})

	direct := mustOAuthEnv(t, nil)
	g := direct.issue(t, "user-direct", "web")
	if code := refresh(direct, g.RefreshToken); code != http.StatusOK {
		t.Fatalf("refresh: %d", code)
	}
	wantFields(t, eventOfType(t, auditOf(t, direct.app, g.FamilyID), "token.rotated"), map[string]any{
		"context": map[string]any{"ip": "127.0.0.1", "user_agent": "Go-http-client/1.1"}})
}

// TestAuditListenerLogsTheClient: a refused audit caller behind a trusted
// proxy is logged by its forwarded address, beside the proxy's.
func TestAuditListenerLogsTheClient(t *testing.T) {
	cfg := testConfig(t)
	cfg.TrustedProxies = "127.0.0.0/8"
	logs := &syncBuffer{}
	app := MustApp(t, cfg, logs)
	req, _ := http.NewRequest(http.MethodGet, "https://"+app.AuditAddr()+"/v1/audit", nil)
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	resp, err := auditClient(nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(logs.String(), "remote=203.0.113.9 proxy=127.0.0.1") {
		t.Fatalf("status %d, logs:\n%s", resp.StatusCode, logs.String())
	}
}
