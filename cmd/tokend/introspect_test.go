package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/registry"
	"github.com/tokend/tokend/tokens"
)

// introspectEnv is two tokend instances on one NATS server, each with its
// OAuth listener, behind one public issuer as a load balancer would put
// them, and the clients the introspection tests register.
type introspectEnv struct {
	apps   []*App
	logs   []*syncBuffer
	nc     *nats.Conn
	secret string
}

// Clients of introspectEnv: web owns the families; api-gw is a resource
// server for the first audience, billing-gw for the second; other is any
// confidential client; spa is public.
var introspectClients = []domain.Client{
	{ID: "web", Type: domain.ClientConfidential},
	{ID: "api-gw", Type: domain.ClientConfidential, Resources: []string{"https://api.example.com"}},
	{ID: "billing-gw", Type: domain.ClientConfidential, Resources: []string{"https://billing.example.com"}},
	{ID: "other", Type: domain.ClientConfidential},
	{ID: "spa", Type: domain.ClientPublic},
}

func mustIntrospectEnv(t *testing.T, instances int) *introspectEnv {
	t.Helper()
	natsURL := eventstest.MustJetStream(t).ClientURL()
	issuer := "http://" + freeAddr(t)
	e := &introspectEnv{secret: "introspect-secret-0123456789abcdef0123"}
	for range instances {
		cfg := oauthConfig(t, natsURL)
		cfg.Issuer = issuer
		cfg.IssueRate, cfg.RefreshRate = 0, 0 // the trials rotate faster than a client may
		logs := &syncBuffer{}
		e.apps, e.logs = append(e.apps, MustApp(t, cfg, logs)), append(e.logs, logs)
	}
	e.nc = eventstest.MustConnect(t, natsURL)
	for _, c := range introspectClients {
		c.Scopes = []string{"openid", "api:read", "api:write"}
		c.Audiences = []string{"https://api.example.com", "https://billing.example.com"}
		hash := ""
		if c.Type == domain.ClientConfidential {
			hash = domain.HashClientSecret(e.secret)
		}
		if _, err := e.apps[0].Clients().Put(t.Context(), c, hash, 0, registry.Actor{By: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, app := range e.apps {
		eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			for _, c := range introspectClients {
				if _, ok := app.Clients().Lookup(c.ID); !ok {
					return fmt.Errorf("client %s not registered yet", c.ID)
				}
			}
			return nil
		})
	}
	return e
}

// post sends a form to an instance's OAuth listener as client: Basic
// authentication for confidential clients, client_id for public ones.
func (e *introspectEnv) post(t *testing.T, app *App, path, client string, form url.Values) (int, map[string]any) {
	t.Helper()
	if c, _ := app.Clients().Lookup(client); c.Type == domain.ClientPublic {
		form.Set("client_id", client)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+app.OAuthAddr()+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if form.Get("client_id") == "" {
		req.SetBasicAuth(client, e.secret)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil && len(raw) > 0 {
		t.Fatalf("%s: %d %q", path, resp.StatusCode, raw)
	}
	return resp.StatusCode, body
}

// introspectHTTP introspects token at app as client and checks the answer
// is 200 with the given activity; an inactive answer must be exactly
// {"active": false}.
func (e *introspectEnv) introspectHTTP(t *testing.T, app *App, client, token string, active bool) map[string]any {
	t.Helper()
	code, body := e.post(t, app, "/oauth2/introspect", client, url.Values{"token": {token}})
	if code != http.StatusOK || body["active"] != active || (!active && len(body) != 1) {
		t.Fatalf("introspect as %s: %d %v, want active %v", client, code, body, active)
	}
	return body
}

// introspectNATS introspects a refresh token over NATS (any instance
// answers) and checks its activity and that as_of_seq is at least atLeast.
func (e *introspectEnv) introspectNATS(t *testing.T, token string, active bool, atLeast uint64) wire.Introspection {
	t.Helper()
	in := mustQuery[wire.Introspection](t, e.nc, "tokens.query.introspect", wire.IntrospectRequest{RefreshToken: token})
	if in.Active != active || in.AsOfSeq < atLeast || (active && (in.TokenType != "refresh_token" || in.ClientID == "")) ||
		(!active && (in.FamilyID != "" || in.ClientID != "" || in.Scope != nil)) {
		t.Fatalf("introspect over NATS: %+v, want active %v as of at least %d", in, active, atLeast)
	}
	return in
}

// rotate exchanges a refresh token at app's token endpoint as web.
func (e *introspectEnv) rotate(t *testing.T, app *App, token string) (refresh, access string) {
	t.Helper()
	code, body := e.post(t, app, "/oauth2/token", "web", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {token}})
	if code != http.StatusOK {
		t.Fatalf("token endpoint: %d %v", code, body)
	}
	return body["refresh_token"].(string), body["access_token"].(string)
}

// TestIntrospectionNeverLags: with every read model paused, whatever was
// acknowledged on instance A (an issue, a rotation, a revocation) is what
// introspection on instance B says, right away, over HTTP and NATS, for
// refresh and access tokens, every time.
func TestIntrospectionNeverLags(t *testing.T) {
	e := mustIntrospectEnv(t, 2)
	a, b := e.apps[0], e.apps[1]
	for _, app := range e.apps {
		pauseProjector(app)
	}
	const trials = 8
	for range trials {
		f := mustIssue(t, e.nc, "user-trial", "web")
		e.introspectNATS(t, f.RefreshToken, true, f.Seq)
		e.introspectHTTP(t, b, "web", f.RefreshToken, true)
		e.introspectHTTP(t, b, "api-gw", f.AccessToken, true)

		child, access := e.rotate(t, a, f.RefreshToken)
		e.introspectHTTP(t, b, "web", f.RefreshToken, false) // the just-rotated parent, inside the reuse interval
		e.introspectNATS(t, f.RefreshToken, false, f.Seq+1)
		if body := e.introspectHTTP(t, b, "web", child, true); body["token_use"] != "refresh_token" || body["sid"] != f.FamilyID {
			t.Fatalf("the new refresh token: %v", body)
		}
		e.introspectNATS(t, child, true, f.Seq+1)
		e.introspectHTTP(t, b, "api-gw", access, true)

		if code, body := e.post(t, a, "/oauth2/revoke", "web", url.Values{"token": {child}}); code != http.StatusOK {
			t.Fatalf("revoke: %d %v", code, body)
		}
		e.introspectHTTP(t, b, "api-gw", access, false)
		e.introspectHTTP(t, b, "web", access, false)
		e.introspectHTTP(t, b, "web", child, false)
		e.introspectNATS(t, child, false, f.Seq+2)
	}

	// min_seq at or below the family's last event needs no read model; one
	// beyond it (another family's write) waits for the read model to
	// confirm it, which is paused: temporarily_unavailable after the wait.
	older := mustIssue(t, e.nc, "user-older", "web")
	newer := mustIssue(t, e.nc, "user-newer", "web")
	in := mustQuery[wire.Introspection](t, e.nc, "tokens.query.introspect", wire.IntrospectRequest{RefreshToken: newer.RefreshToken, MinSeq: newer.Seq})
	if !in.Active || in.AsOfSeq < newer.Seq {
		t.Fatalf("min_seq of the family's own write, read model paused: %+v", in)
	}
	wantError(t, call(t, e.nc, "tokens.query.introspect", wire.IntrospectRequest{RefreshToken: older.RefreshToken, MinSeq: newer.Seq}),
		"temporarily_unavailable")
	for _, app := range e.apps {
		resumeProjector(app)
	}
	in = mustQuery[wire.Introspection](t, e.nc, "tokens.query.introspect", wire.IntrospectRequest{RefreshToken: older.RefreshToken, MinSeq: newer.Seq})
	if !in.Active || in.AsOfSeq < newer.Seq {
		t.Fatalf("min_seq of another family's write, read model running: %+v", in)
	}
	if wantNATS := 4*trials + 2; natsIntrospections(t, e.apps) != float64(wantNATS) {
		t.Fatalf("NATS introspections counted: %v, want %d", natsIntrospections(t, e.apps), wantNATS)
	}
}

// natsIntrospections sums tokend_nats_introspections_total of apps.
func natsIntrospections(t *testing.T, apps []*App) float64 {
	n := 0.0
	for _, app := range apps {
		m := parseMetrics(t, scrape(t, app))
		n += m.value("tokend_nats_introspections_total", "result", "active") + m.value("tokend_nats_introspections_total", "result", "inactive")
	}
	return n
}

// TestIntrospectionAuthorization: a refresh token is shown to its own
// client only; an access token to its own client and to resource servers
// for one of its audiences; any other client gets {"active": false}, is
// logged and counted; a public client cannot introspect at all.
func TestIntrospectionAuthorization(t *testing.T) {
	e := mustIntrospectEnv(t, 1)
	app := e.apps[0]
	f := mustIssue(t, e.nc, "user-authz", "web") // its access token is for https://api.example.com

	body := e.introspectHTTP(t, app, "web", f.RefreshToken, true)
	if _, ok := body["token_type"]; ok || body["token_use"] != "refresh_token" || body["client_id"] != "web" || body["sid"] != f.FamilyID {
		t.Fatalf("the refresh token to its client: %v", body)
	}
	for _, client := range []string{"api-gw", "billing-gw", "other"} {
		e.introspectHTTP(t, app, client, f.RefreshToken, false)
	}
	for _, client := range []string{"web", "api-gw"} {
		body = e.introspectHTTP(t, app, client, f.AccessToken, true)
		if body["token_type"] != "Bearer" || body["token_use"] != "access_token" || body["client_id"] != "web" || body["sid"] != f.FamilyID ||
			body["scope"] != "openid api:read api:write" {
			t.Fatalf("the access token to %s: %v", client, body)
		}
	}
	for _, client := range []string{"billing-gw", "other"} {
		e.introspectHTTP(t, app, client, f.AccessToken, false)
	}
	for _, token := range []string{f.RefreshToken, f.AccessToken} {
		if code, body := e.post(t, app, "/oauth2/introspect", "spa", url.Values{"token": {token}}); code != http.StatusUnauthorized {
			t.Fatalf("a public client introspects: %d %v", code, body)
		}
	}
	e.introspectHTTP(t, app, "other", "not a token", false)
	e.introspectHTTP(t, app, "other", f.RefreshToken[:len(f.RefreshToken)-2]+"AA", false)

	m := parseMetrics(t, scrape(t, app))
	for _, c := range []struct {
		caller, result string
		want           float64
	}{
		{"own_client", "active", 2}, {"resource_server", "active", 1}, {"not_allowed", "inactive", 5}, {"unknown", "inactive", 2},
		{"own_client", "inactive", 0}, {"not_allowed", "active", 0},
	} {
		if got := m.value("tokend_oauth_introspections_total", "caller", c.caller, "result", c.result); got != c.want {
			t.Errorf("tokend_oauth_introspections_total{caller=%q,result=%q} = %v, want %v", c.caller, c.result, got, c.want)
		}
	}
	logs := e.logs[0].String()
	for _, client := range []string{"api-gw", "billing-gw", "other"} {
		if !strings.Contains(logs, `client_id=`+client+` family_id=`+f.FamilyID+` remote=127.0.0.1`) || !strings.Contains(logs, "oauth introspection refused") {
			t.Errorf("no refusal logged for %s:\n%s", client, logs)
		}
	}
	for _, secret := range []string{f.RefreshToken, f.AccessToken, e.secret} {
		if strings.Contains(logs, secret) {
			t.Fatalf("a token or secret is in the log:\n%s", logs)
		}
	}
}

// TestIntrospectionChecksClaimsAgainstFamily: access tokens signed with the
// deployment's own key, as whoever holds it could, but claiming more than
// their family holds are inactive; what tokend minted is active.
func TestIntrospectionChecksClaimsAgainstFamily(t *testing.T) {
	e := mustIntrospectEnv(t, 1)
	app := e.apps[0]
	f := mustIssue(t, e.nc, "user-claims", "web")
	fam := domain.Family{ID: f.FamilyID, Subject: "user-claims", ClientID: "web"}
	now := time.Now()
	mint := func(edit func(*tokens.Grant, *time.Time)) string {
		g := tokens.Grant{Family: fam, Scope: []string{"api:read"}, Audience: []string{"https://api.example.com"}}
		at := now
		if edit != nil {
			edit(&g, &at)
		}
		tok, err := app.api.Access.Mint(g, at)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	e.introspectHTTP(t, app, "web", mint(nil), true)
	e.introspectHTTP(t, app, "api-gw", mint(nil), true)
	for name, c := range map[string]struct {
		edit   func(*tokens.Grant, *time.Time)
		caller string
	}{
		"a scope beyond the grant": {func(g *tokens.Grant, _ *time.Time) { g.Scope = []string{"api:read", "admin"} }, "web"},
		"an audience beyond the family": {func(g *tokens.Grant, _ *time.Time) {
			g.Audience = []string{"https://api.example.com", "https://evil.example.com"}
		}, "web"},
		"another client":  {func(g *tokens.Grant, _ *time.Time) { g.Family.ClientID = "other" }, "api-gw"},
		"another subject": {func(g *tokens.Grant, _ *time.Time) { g.Family.Subject = "user-admin" }, "web"},
		"issued before the family existed": {func(g *tokens.Grant, at *time.Time) {
			*at, g.AccessTTL = now.Add(-time.Hour), 2*time.Hour // still unexpired
		}, "web"},
		"a family that does not exist": {func(g *tokens.Grant, _ *time.Time) { g.Family.ID = "no-such-family" }, "web"},
	} {
		t.Run(name, func(t *testing.T) { e.introspectHTTP(t, app, c.caller, mint(c.edit), false) })
	}
}
