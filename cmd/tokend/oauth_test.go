package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/nats-io/nats.go"
	"golang.org/x/oauth2"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/registry"
)

// oauthEnv is a tokend with its OAuth listener on, and the clients the
// tests register.
type oauthEnv struct {
	app    *App
	nc     *nats.Conn
	base   string // the issuer: http://<OAuth listener>
	logs   *syncBuffer
	secret string // web's client secret
	key    ed25519.PrivateKey
}

// oauthConfig returns a tokend config whose OAuth listener and issuer are
// at a free address, joining natsURL when set.
func oauthConfig(tb testing.TB, natsURL string) Config {
	cfg := testConfig(tb)
	cfg.NATSURL = natsURL
	cfg.OAuthHTTP.Addr = freeAddr(tb)
	cfg.Issuer = "http://" + cfg.OAuthHTTP.Addr
	return cfg
}

func mustOAuthEnv(t *testing.T, configure func(*Config)) *oauthEnv {
	t.Helper()
	cfg := oauthConfig(t, "")
	if configure != nil {
		configure(&cfg)
	}
	e := &oauthEnv{logs: &syncBuffer{}}
	e.app = MustApp(t, cfg, e.logs)
	e.base = e.app.issuer
	e.nc = eventstest.MustConnect(t, e.app.NATSURL())
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	e.key = priv
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: pub, KeyID: "svc-1", Algorithm: string(jose.EdDSA), Use: "sig"}}})
	e.secret = "web-secret-" + domain.NewID([]byte(fmt.Sprint(time.Now().UnixNano())))
	grant := func(c domain.Client) domain.Client {
		c.Scopes = []string{"openid", "api:read", "api:write"}
		c.Audiences = []string{"https://api.example.com", "https://billing.example.com"}
		return c
	}
	for _, c := range []struct {
		client domain.Client
		hash   string
	}{
		{grant(domain.Client{ID: "web", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretBasic}), domain.HashClientSecret(e.secret)},
		{grant(domain.Client{ID: "web-post", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretPost}), domain.HashClientSecret(e.secret)},
		{grant(domain.Client{ID: "svc", Type: domain.ClientConfidential, AuthMethod: domain.AuthPrivateKeyJWT, JWKS: jwks}), ""},
		{grant(domain.Client{ID: "spa", Type: domain.ClientPublic}), ""},
		{grant(domain.Client{ID: "audited", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretBasic, OnReplay: domain.ReplayAuditOnly}), domain.HashClientSecret(e.secret)},
		{grant(domain.Client{ID: "strict", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretBasic, OnReplay: domain.ReplayRevokeSubject}), domain.HashClientSecret(e.secret)},
	} {
		if _, err := e.app.Clients().Put(t.Context(), c.client, c.hash, 0, registry.Actor{By: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// post sends a form to the OAuth listener, authenticating with HTTP Basic
// when user is set, and decodes the JSON answer.
func (e *oauthEnv) post(t *testing.T, path string, form url.Values, user, pass string) (int, http.Header, map[string]any) {
	t.Helper()
	code, header, raw := e.send(t, path, form, user, pass, nil)
	var body map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &body); err != nil {
			t.Fatalf("%s: %d %q", path, code, raw)
		}
	}
	return code, header, body
}

// send posts form to the OAuth listener with the extra headers, and HTTP
// Basic credentials when user is set.
func (e *oauthEnv) send(t *testing.T, path string, form url.Values, user, pass string, extra http.Header) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.base+path, strings.NewReader(form.Encode()))
	for k, v := range extra {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if user != "" {
		req.SetBasicAuth(url.QueryEscape(user), url.QueryEscape(pass))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, raw
}

func (e *oauthEnv) assertion(t *testing.T, clientID string) string {
	t.Helper()
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: e.key}, (&jose.SignerOptions{}).WithHeader("kid", "svc-1"))
	now := time.Now()
	s, err := jwt.Signed(signer).Claims(jwt.Claims{Issuer: clientID, Subject: clientID, Audience: jwt.Audience{e.base + "/oauth2/token"},
		ID: domain.NewID([]byte(fmt.Sprint(now.UnixNano()))), IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(time.Minute))}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *oauthEnv) issue(t *testing.T, subject, client string) wire.TokenReply {
	t.Helper()
	return mustIssue(t, e.nc, subject, client)
}

// TestOAuthWithStockClient: golang.org/x/oauth2, unchanged, refreshes an
// expired token over HTTP twice and gets a rotated refresh token each
// time; the access tokens verify against the published JWKS.
func TestOAuthWithStockClient(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	f := e.issue(t, "user-oauth", "web")
	cfg := oauth2.Config{ClientID: "web", ClientSecret: e.secret,
		Endpoint: oauth2.Endpoint{TokenURL: e.base + "/oauth2/token", AuthStyle: oauth2.AuthStyleInHeader}}
	ctx := context.Background()
	current := &oauth2.Token{RefreshToken: f.RefreshToken, Expiry: time.Now().Add(-time.Minute)}
	seen := map[string]bool{f.RefreshToken: true}
	for i := range 2 {
		tok, err := cfg.TokenSource(ctx, current).Token()
		if err != nil {
			t.Fatalf("refresh %d: %v", i, err)
		}
		if tok.AccessToken == "" || seen[tok.RefreshToken] || tok.TokenType != "Bearer" || !tok.Expiry.After(time.Now()) {
			t.Fatalf("refresh %d: %+v", i, tok)
		}
		if _, err := e.app.api.Access.Verify(tok.AccessToken, time.Now()); err != nil {
			t.Fatalf("refresh %d: access token: %v", i, err)
		}
		seen[tok.RefreshToken] = true
		tok.Expiry = time.Now().Add(-time.Minute) // force the next refresh
		current = tok
	}
	if got := countTypes(familyEvents(t, e.nc, f.FamilyID))["token.rotated"]; got != 2 {
		t.Fatalf("%d rotations, want 2", got)
	}

	// client_secret_post, a down-scope and a resource, answered no-store.
	f2 := e.issue(t, "user-oauth", "web-post")
	code, header, body := e.post(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {f2.RefreshToken},
		"client_id": {"web-post"}, "client_secret": {e.secret}, "scope": {"api:read"}, "resource": {"https://billing.example.com"}}, "", "")
	if code != http.StatusOK || body["scope"] != "api:read" || header.Get("Cache-Control") != "no-store" {
		t.Fatalf("client_secret_post: %d %v %v", code, header, body)
	}
	claims, err := e.app.api.Access.Verify(body["access_token"].(string), time.Now())
	if err != nil || len(claims.Audience) != 1 || claims.Audience[0] != "https://billing.example.com" {
		t.Fatalf("audience from resource: %+v %v", claims, err)
	}
}

// TestOAuthPrivateKeyJWT: a confidential client authenticating with an
// assertion signed by a key of its registered JWKS (RFC 7523).
func TestOAuthPrivateKeyJWT(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	f := e.issue(t, "user-svc", "svc")
	form := func(assertion string, token string) url.Values {
		return url.Values{"grant_type": {"refresh_token"}, "refresh_token": {token},
			"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion}}
	}
	assertion := e.assertion(t, "svc")
	code, _, body := e.post(t, "/oauth2/token", form(assertion, f.RefreshToken), "", "")
	if code != http.StatusOK {
		t.Fatalf("private_key_jwt: %d %v", code, body)
	}
	// The same assertion again is refused: its jti was used.
	code, header, body := e.post(t, "/oauth2/token", form(assertion, body["refresh_token"].(string)), "", "")
	if code != http.StatusUnauthorized || body["error"] != "invalid_client" || header.Get("WWW-Authenticate") == "" {
		t.Fatalf("a replayed assertion: %d %v", code, body)
	}
	// An assertion for another client, signed by svc's key.
	other := e.issue(t, "user-svc", "web")
	if code, _, body := e.post(t, "/oauth2/token", form(e.assertion(t, "web"), other.RefreshToken), "", ""); code != http.StatusUnauthorized {
		t.Fatalf("svc's key speaking for web: %d %v", code, body)
	}
}

// TestOAuthErrors: every error of RFC 6749 section 5.2 with its status,
// a challenge on invalid_client, Retry-After on a rate limit, and no
// change to the family.
func TestOAuthErrors(t *testing.T) {
	// The family's budget: the two refusals that reach it (scope, target)
	// and one rotation.
	e := mustOAuthEnv(t, func(c *Config) { c.RefreshRate, c.RefreshBurst = 0.001, 3 })
	f := e.issue(t, "user-errors", "web")
	refresh := func(extra url.Values) url.Values {
		v := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {f.RefreshToken}}
		for k, vs := range extra {
			v[k] = vs
		}
		return v
	}
	cases := []struct {
		name       string
		form       url.Values
		user, pass string
		status     int
		code       string
	}{
		{"no grant_type", url.Values{"refresh_token": {f.RefreshToken}}, "web", e.secret, 400, "invalid_request"},
		{"another grant", refresh(url.Values{"grant_type": {"authorization_code"}}), "web", e.secret, 400, "unsupported_grant_type"},
		{"no refresh_token", url.Values{"grant_type": {"refresh_token"}}, "web", e.secret, 400, "invalid_request"},
		{"two auth methods", refresh(url.Values{"client_secret": {e.secret}, "client_id": {"web"}}), "web", e.secret, 400, "invalid_request"},
		{"wrong secret", refresh(nil), "web", e.secret + "x", 401, "invalid_client"},
		{"unknown client", refresh(nil), "nobody", e.secret, 401, "invalid_client"},
		{"not the registered method", refresh(url.Values{"client_id": {"svc"}, "client_secret": {e.secret}}), "", "", 401, "invalid_client"},
		{"no authentication", refresh(nil), "", "", 401, "invalid_client"},
		{"a forged token", refresh(url.Values{"refresh_token": {"rt1.x.1.k.AAAA.BBBB"}}), "web", e.secret, 400, "invalid_grant"},
		{"a wider scope", refresh(url.Values{"scope": {"admin"}}), "web", e.secret, 400, "invalid_scope"},
		{"a foreign resource", refresh(url.Values{"resource": {"https://evil.example.com"}}), "web", e.secret, 400, "invalid_target"},
		{"two resources", refresh(url.Values{"resource": {"https://api.example.com", "https://billing.example.com"}}), "web", e.secret, 400, "invalid_target"},
	}
	for _, c := range cases {
		code, header, body := e.post(t, "/oauth2/token", c.form, c.user, c.pass)
		if code != c.status || body["error"] != c.code || body["error_description"] == "" || header.Get("Cache-Control") != "no-store" {
			t.Errorf("%s: %d %v, want %d %s", c.name, code, body, c.status, c.code)
		}
		if c.status == 401 && !strings.HasPrefix(header.Get("WWW-Authenticate"), "Basic") {
			t.Errorf("%s: no WWW-Authenticate challenge", c.name)
		}
	}
	// A query string and a non-form body are refused too.
	req, _ := http.NewRequest(http.MethodPost, e.base+"/oauth2/token", strings.NewReader(`{"grant_type":"refresh_token"}`))
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth("web", e.secret)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 400 {
		t.Errorf("a JSON body: %v %v", resp, err)
	}
	// The token survived every refusal; the one rotation the limit allows
	// goes through, the next is 429 with Retry-After.
	code, _, body := e.post(t, "/oauth2/token", refresh(nil), "web", e.secret)
	if code != 200 {
		t.Fatalf("after the refusals: %d %v", code, body)
	}
	code, header, body := e.post(t, "/oauth2/token", refresh(url.Values{"refresh_token": {body["refresh_token"].(string)}}), "web", e.secret)
	if code != http.StatusTooManyRequests || body["error"] != "temporarily_unavailable" || header.Get("Retry-After") == "" {
		t.Fatalf("over the rate limit: %d %v %v", code, header, body)
	}
}

// TestOAuthClientIsolation: a public client presenting a confidential
// client's token is refused and revokes nothing; a client revokes only its
// own tokens; introspection is for confidential clients.
func TestOAuthClientIsolation(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	f := e.issue(t, "user-iso", "web")
	code, _, body := e.post(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {f.RefreshToken}, "client_id": {"spa"}}, "", "")
	if code != 400 || body["error"] != "invalid_grant" {
		t.Fatalf("spa with web's token: %d %v", code, body)
	}
	if code, _, body := e.post(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {f.RefreshToken}, "client_id": {"web"}}, "", ""); code != 401 {
		t.Fatalf("web's id without its secret: %d %v", code, body)
	}
	// Revocation: 200 either way, but only the owner's revokes.
	for _, form := range []url.Values{
		{"token": {f.RefreshToken}, "client_id": {"spa"}},
		{"token": {"not a token"}, "client_id": {"spa"}},
	} {
		if code, _, body := e.post(t, "/oauth2/revoke", form, "", ""); code != 200 {
			t.Fatalf("revoke by spa: %d %v", code, body)
		}
	}
	introspect := func(token string) map[string]any {
		code, _, body := e.post(t, "/oauth2/introspect", url.Values{"token": {token}}, "web", e.secret)
		if code != 200 {
			t.Fatalf("introspect: %d %v", code, body)
		}
		return body
	}
	next := mustRefresh(t, e.nc, f.RefreshToken, "web") // spa's revoke changed nothing
	mustQuery[wire.FamilyView](t, e.nc, "tokens.query.family", wire.FamilyRequest{FamilyID: f.FamilyID, MinSeq: next.Seq})
	if body := introspect(next.RefreshToken); body["active"] != true || body["client_id"] != "web" || body["token_use"] != "refresh_token" {
		t.Fatalf("introspect the refresh token: %v", body)
	}
	if body := introspect(next.AccessToken); body["active"] != true || body["sid"] != f.FamilyID || body["token_type"] != "Bearer" {
		t.Fatalf("introspect the access token: %v", body)
	}
	if code, _, _ := e.post(t, "/oauth2/introspect", url.Values{"token": {next.AccessToken}, "client_id": {"spa"}}, "", ""); code != 401 {
		t.Fatalf("a public client introspects: %d", code)
	}
	if code, _, body := e.post(t, "/oauth2/revoke", url.Values{"token": {next.AccessToken}}, "web", e.secret); code != 200 {
		t.Fatalf("revoke by web: %d %v", code, body)
	}
	eventstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if body := introspect(next.AccessToken); body["active"] != false {
			return fmt.Errorf("the access token of a revoked family: %v", body)
		}
		return nil
	})
	if body := introspect(next.RefreshToken); body["active"] != false || len(body) != 1 {
		t.Fatalf("the refresh token of a revoked family: %v", body)
	}
}

// TestOAuthAndNATSKeepOneChain: parallel refreshes of one token over HTTP
// and over NATS rotate it once; everyone gets the same child.
func TestOAuthAndNATSKeepOneChain(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	f := e.issue(t, "user-race", "web")
	var (
		mu       sync.Mutex
		children = map[string]int{}
		wg       sync.WaitGroup
	)
	for i := range 20 {
		wg.Go(func() {
			var child string
			if i%2 == 0 {
				code, _, body := e.post(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {f.RefreshToken}}, "web", e.secret)
				if code != 200 {
					t.Errorf("HTTP refresh: %d %v", code, body)
					return
				}
				child = body["refresh_token"].(string)
			} else {
				r := refresh(t, e.nc, f.RefreshToken, "web")
				if r.errCode != "" {
					t.Errorf("NATS refresh: %s", r.raw)
					return
				}
				child = r.token.RefreshToken
			}
			mu.Lock()
			children[child]++
			mu.Unlock()
		})
	}
	wg.Wait()
	types := countTypes(familyEvents(t, e.nc, f.FamilyID))
	if len(children) != 1 || types["token.rotated"] != 1 || types["token.reused"] != 19 {
		t.Fatalf("%d different children, events %v", len(children), types)
	}
}

// TestOAuthReplayPolicies: each client's on_replay does what it says.
func TestOAuthReplayPolicies(t *testing.T) {
	e := mustOAuthEnv(t, func(c *Config) { c.ReuseInterval = 0 }) // every parent presented again is a replay
	replay := func(client string, f wire.TokenReply) wire.TokenReply {
		t.Helper()
		next := mustRefresh(t, e.nc, f.RefreshToken, client)
		wantError(t, refresh(t, e.nc, f.RefreshToken, client), "invalid_grant")
		return next
	}
	status := func(f wire.TokenReply) string {
		evs := familyEvents(t, e.nc, f.FamilyID)
		return mustQuery[wire.FamilyView](t, e.nc, "tokens.query.family", wire.FamilyRequest{FamilyID: f.FamilyID, MinSeq: evs[len(evs)-1].Seq}).Status
	}

	// revoke_family (the default): this family dies, the subject's others live.
	a, b := e.issue(t, "user-fam", "web"), e.issue(t, "user-fam", "web")
	replay("web", a)
	if status(a) != "revoked" || status(b) != "active" {
		t.Fatalf("revoke_family: %s and %s", status(a), status(b))
	}
	// revoke_subject: every family of the subject dies.
	c, d := e.issue(t, "user-subj", "strict"), e.issue(t, "user-subj", "web")
	replay("strict", c)
	eventstest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if s1, s2 := status(c), status(d); s1 != "revoked" || s2 != "revoked" {
			return fmt.Errorf("revoke_subject: %s and %s", s1, s2)
		}
		return nil
	})
	// audit_only: recorded and refused, the family lives on.
	g := e.issue(t, "user-audit", "audited")
	next := replay("audited", g)
	types := countTypes(familyEvents(t, e.nc, g.FamilyID))
	if types["token.replay_detected"] != 1 || types["family.revoked"] != 0 || status(g) != "active" {
		t.Fatalf("audit_only: %v, %s", types, status(g))
	}
	mustRefresh(t, e.nc, next.RefreshToken, "audited")
}

// TestOAuthSecretRotationReachesEveryInstance: a secret rotated through
// one instance's registry is accepted by another instance's OAuth
// listener once its watch delivers the change, and the old secret keeps
// working through its grace period only.
func TestOAuthSecretRotationReachesEveryInstance(t *testing.T) {
	natsURL := eventstest.MustJetStream(t).ClientURL()
	logs := &syncBuffer{}
	a := MustApp(t, oauthConfig(t, natsURL), logs)
	bCfg := oauthConfig(t, natsURL)
	b := MustApp(t, bCfg, logs)
	old := "old-secret-of-the-web-client-0123456789"
	client := domain.Client{ID: "rot", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretBasic,
		Scopes: []string{"openid", "api:read", "api:write"}, Audiences: []string{"https://api.example.com", "https://billing.example.com"}}
	if _, err := a.Clients().Put(t.Context(), client, domain.HashClientSecret(old), 0, registry.Actor{By: "test"}); err != nil {
		t.Fatal(err)
	}
	nc := eventstest.MustConnect(t, natsURL)
	f := mustIssue(t, nc, "user-rot", "rot")
	env := &oauthEnv{base: bCfg.Issuer}
	tokenAt := func(secret, token string) (int, map[string]any) {
		code, _, body := env.post(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {token}}, "rot", secret)
		return code, body
	}
	var code int
	var body map[string]any
	eventstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if code, body = tokenAt(old, f.RefreshToken); code != 200 {
			return fmt.Errorf("b does not know the client yet: %d %v", code, body)
		}
		return nil
	})
	current := body["refresh_token"].(string)

	fresh := "new-secret-of-the-web-client-9876543210"
	rotated := time.Now()
	if _, err := a.Clients().RotateSecret(t.Context(), "rot", domain.HashClientSecret(fresh), 0, 0, registry.Actor{By: "test"}); err != nil {
		t.Fatal(err)
	}
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if code, body = tokenAt(fresh, current); code != 200 {
			return fmt.Errorf("the new secret on b: %d %v", code, body)
		}
		return nil
	})
	t.Logf("the rotated secret worked on the other instance after %v", time.Since(rotated).Round(time.Millisecond))
	if code, _ := tokenAt(old, body["refresh_token"].(string)); code != 401 {
		t.Fatalf("the old secret after a rotation without grace: %d", code)
	}
	for _, secret := range []string{old, fresh} {
		if strings.Contains(logs.String(), secret) {
			t.Fatal("a client secret reached the logs")
		}
	}
	_ = b
}

// TestOAuthMetadata: RFC 8414, describing exactly what is served.
func TestOAuthMetadata(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	md := e.metadata(t)
	if md["issuer"] != e.base || md["token_endpoint"] != e.base+"/oauth2/token" || md["jwks_uri"] != e.base+"/.well-known/jwks.json" ||
		fmt.Sprint(md["grant_types_supported"]) != "[refresh_token client_credentials]" ||
		fmt.Sprint(md["scopes_supported"]) != "[ssf.read ssf.manage]" {
		t.Fatalf("metadata: %v", md)
	}
	for _, endpoint := range []string{"token_endpoint", "revocation_endpoint", "introspection_endpoint", "jwks_uri"} {
		u := md[endpoint].(string)
		method := http.MethodPost
		if endpoint == "jwks_uri" {
			method = http.MethodGet
		}
		req, _ := http.NewRequest(method, u, nil)
		r, err := http.DefaultClient.Do(req)
		if err != nil || r.StatusCode == http.StatusNotFound || r.StatusCode == http.StatusMethodNotAllowed {
			t.Fatalf("%s %s is not served: %v %v", method, u, r, err)
		}
		r.Body.Close()
	}
}

// TestOAuthLeavesNoSecrets: after every kind of OAuth exchange, refused
// ones included, no client secret, token, assertion or Authorization
// header is in the debug-level logs or anywhere in the data directory.
func TestOAuthLeavesNoSecrets(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	needles := []string{e.secret, e.secret + "x"}
	keep := func(body map[string]any) {
		for _, k := range []string{"access_token", "refresh_token"} {
			if v, ok := body[k].(string); ok {
				needles = append(needles, v)
			}
		}
	}
	f := e.issue(t, "user-leak", "web")
	needles = append(needles, f.RefreshToken, f.AccessToken)
	_, _, body := e.post(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {f.RefreshToken}}, "web", e.secret)
	keep(body)
	e.post(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {body["refresh_token"].(string)}}, "web", e.secret+"x")
	e.post(t, "/oauth2/introspect", url.Values{"token": {body["access_token"].(string)}}, "web", e.secret)
	g := e.issue(t, "user-leak", "svc")
	assertion := e.assertion(t, "svc")
	needles = append(needles, g.RefreshToken, assertion)
	_, _, body = e.post(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {g.RefreshToken},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}, "client_assertion": {assertion}}, "", "")
	keep(body)
	e.post(t, "/oauth2/revoke", url.Values{"token": {body["refresh_token"].(string)}}, "web", e.secret)
	e.app.Stop()

	logs := e.logs.String()
	if !strings.Contains(logs, "oauth client authentication refused") {
		t.Fatal("the refused attempt was not logged: the log scan below proves nothing")
	}
	for _, n := range append(needles, "Authorization", "Basic ") {
		if strings.Contains(logs, n) {
			t.Fatalf("the logs hold %.12s…", n)
		}
	}
	if err := filepath.WalkDir(e.app.cfg.DataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		for _, n := range needles {
			if bytes.Contains(data, []byte(n)) {
				t.Errorf("%s holds a secret or a token", path)
			}
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
