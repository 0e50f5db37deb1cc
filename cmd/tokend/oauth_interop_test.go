package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/jti"
	"github.com/tokend/tokend/registry"
)

// jwtBearer is the client_assertion_type of RFC 7523.
const jwtBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// o4wAssertion is a client assertion made the way oauth4webapi makes
// one: header {"alg":"Ed25519","kid":…} (RFC 9864), aud the issuer, a
// minute of life, nbf.
func (e *oauthEnv) o4wAssertion(t *testing.T, clientID string) string {
	t.Helper()
	now := time.Now().Unix()
	payload, _ := json.Marshal(map[string]any{"jti": domain.NewID([]byte(fmt.Sprint(time.Now().UnixNano()))), "aud": e.base,
		"exp": now + 60, "iat": now, "nbf": now, "iss": clientID, "sub": clientID})
	input := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"Ed25519","kid":"svc-1"}`)) + "." +
		base64.RawURLEncoding.EncodeToString(payload)
	return input + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(e.key, []byte(input)))
}

func refreshWithAssertion(token, assertion string) url.Values {
	return url.Values{"grant_type": {"refresh_token"}, "refresh_token": {token},
		"client_assertion_type": {jwtBearer}, "client_assertion": {assertion}}
}

// metadata fetches the RFC 8414 metadata of e.
func (e *oauthEnv) metadata(t *testing.T) map[string]any {
	t.Helper()
	resp, err := http.Get(e.base + "/.well-known/oauth-authorization-server")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var md map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&md); err != nil || resp.StatusCode != 200 {
		t.Fatalf("metadata: %d %v", resp.StatusCode, err)
	}
	return md
}

// TestOAuthSecretClientsUseEitherSecretMethod: a client with a secret may
// send it by HTTP Basic or in the body, whichever it registered (RFC 6749
// section 2.3.1: Basic MUST be supported; authlib revokes with Basic);
// private_key_jwt and public clients keep to their own method.
func TestOAuthSecretClientsUseEitherSecretMethod(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	f := e.issue(t, "user-methods", "web") // registered for client_secret_basic
	code, _, body := e.post(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {f.RefreshToken},
		"client_id": {"web"}, "client_secret": {e.secret}}, "", "")
	if code != http.StatusOK {
		t.Fatalf("client_secret_basic client, secret in the body: %d %v", code, body)
	}
	g := e.issue(t, "user-methods", "web-post") // registered for client_secret_post
	code, _, body = e.post(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {g.RefreshToken}}, "web-post", e.secret)
	if code != http.StatusOK {
		t.Fatalf("client_secret_post client, secret by Basic: %d %v", code, body)
	}
	if code, _, body := e.post(t, "/oauth2/revoke", url.Values{"token": {body["refresh_token"].(string)}}, "web-post", e.secret); code != http.StatusOK {
		t.Fatalf("revocation by Basic: %d %v", code, body)
	}
	if got := countTypes(familyEvents(t, e.nc, g.FamilyID))["family.revoked"]; got != 1 {
		t.Fatalf("the revocation by Basic revoked %d families", got)
	}
	refresh := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {f.RefreshToken}}
	with := func(extra url.Values) url.Values {
		v := url.Values{}
		for k, vs := range refresh {
			v[k] = vs
		}
		for k, vs := range extra {
			v[k] = vs
		}
		return v
	}
	for _, c := range []struct {
		name       string
		form       url.Values
		user, pass string
	}{
		{"a private_key_jwt client with a secret by Basic", refresh, "svc", e.secret},
		{"a private_key_jwt client with a secret in the body", with(url.Values{"client_id": {"svc"}, "client_secret": {e.secret}}), "", ""},
		{"a public client with a secret", refresh, "spa", e.secret},
		{"a secret client with an assertion", with(url.Values{"client_id": {"web"}, "client_assertion_type": {jwtBearer},
			"client_assertion": {e.assertion(t, "web")}}), "", ""},
		{"a secret client without its secret", with(url.Values{"client_id": {"web"}}), "", ""},
	} {
		if code, _, body := e.post(t, "/oauth2/token", c.form, c.user, c.pass); code != http.StatusUnauthorized || body["error"] != "invalid_client" {
			t.Errorf("%s: %d %v", c.name, code, body)
		}
	}
}

// TestOAuthEmptyResourceIsOmitted: resource= without a value is as if it
// were not sent (RFC 6749 section 3.2), also repeated; two values are
// still refused.
func TestOAuthEmptyResourceIsOmitted(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	f := e.issue(t, "user-resource", "web")
	token := f.RefreshToken
	audienceOf := func(resource []string) []string {
		t.Helper()
		form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {token}}
		if resource != nil {
			form["resource"] = resource
		}
		code, _, body := e.post(t, "/oauth2/token", form, "web", e.secret)
		if code != http.StatusOK {
			t.Fatalf("resource %q: %d %v", resource, code, body)
		}
		token = body["refresh_token"].(string)
		claims, err := e.app.api.Access.Verify(body["access_token"].(string), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return claims.Audience
	}
	omitted := audienceOf(nil)
	for _, resource := range [][]string{{""}, {"", ""}} {
		if got := audienceOf(resource); !slices.Equal(got, omitted) {
			t.Errorf("resource %q: audience %v, want %v as without resource", resource, got, omitted)
		}
	}
	if got := audienceOf([]string{"", "https://billing.example.com"}); !slices.Equal(got, []string{"https://billing.example.com"}) {
		t.Errorf("an empty and a real resource: audience %v", got)
	}
	code, _, body := e.post(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {token},
		"resource": {"", "https://api.example.com", "https://billing.example.com"}}, "web", e.secret)
	if code != http.StatusBadRequest || body["error"] != "invalid_target" {
		t.Fatalf("two resources among empty ones: %d %v", code, body)
	}
}

// TestOAuthEd25519Assertion: an assertion signed with alg "Ed25519" (RFC
// 9864), as oauth4webapi sends it, authenticates; the metadata says so.
func TestOAuthEd25519Assertion(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	f := e.issue(t, "user-ed25519", "svc")
	code, _, body := e.post(t, "/oauth2/token", refreshWithAssertion(f.RefreshToken, e.o4wAssertion(t, "svc")), "", "")
	if code != http.StatusOK {
		t.Fatalf("an Ed25519 assertion: %d %v", code, body)
	}
	md := e.metadata(t)
	for _, endpoint := range []string{"token_endpoint", "revocation_endpoint", "introspection_endpoint"} {
		algs := fmt.Sprint(md[endpoint+"_auth_signing_alg_values_supported"])
		if !strings.Contains(algs, "EdDSA Ed25519") {
			t.Errorf("%s algs %s: want EdDSA and Ed25519", endpoint, algs)
		}
	}
}

// TestOAuthAssertionReplayAcrossInstances: an assertion used at one
// instance is refused at another (the jti cache is the cluster's), and the
// refusal is logged as a replay.
func TestOAuthAssertionReplayAcrossInstances(t *testing.T) {
	natsURL := eventstest.MustJetStream(t).ClientURL()
	// As behind one load balancer: one issuer (a's URL), two listeners.
	// The clients a registers are b's too.
	a := mustOAuthEnv(t, func(c *Config) { c.NATSURL = natsURL })
	bCfg := oauthConfig(t, natsURL)
	bCfg.Issuer = a.base
	b := &oauthEnv{logs: &syncBuffer{}, base: "http://" + bCfg.OAuthHTTP.Addr}
	b.app = MustApp(t, bCfg, b.logs)
	f := a.issue(t, "user-cluster", "svc")
	assertion := a.assertion(t, "svc")
	code, _, body := a.post(t, "/oauth2/token", refreshWithAssertion(f.RefreshToken, assertion), "", "")
	if code != http.StatusOK {
		t.Fatalf("the assertion at the first instance: %d %v", code, body)
	}
	next := body["refresh_token"].(string)
	if code, _, body := b.post(t, "/oauth2/token", refreshWithAssertion(next, assertion), "", ""); code != http.StatusUnauthorized {
		t.Fatalf("the same assertion at the second instance: %d %v", code, body)
	}
	if !strings.Contains(b.logs.String(), "jti already used") {
		t.Fatalf("the second instance did not refuse it as a replay:\n%s", b.logs)
	}
	if code, _, body := b.post(t, "/oauth2/token", refreshWithAssertion(next, a.assertion(t, "svc")), "", ""); code != http.StatusOK {
		t.Fatalf("a fresh assertion at the second instance: %d %v", code, body)
	}
}

// TestOAuthAssertionReplayAfterRestart: the jti cache outlives the
// process (and its embedded NATS server).
func TestOAuthAssertionReplayAfterRestart(t *testing.T) {
	cfg := oauthConfig(t, "")
	e := mustOAuthEnv(t, func(c *Config) { *c = cfg })
	f := e.issue(t, "user-restart", "svc")
	assertion := e.assertion(t, "svc")
	code, _, body := e.post(t, "/oauth2/token", refreshWithAssertion(f.RefreshToken, assertion), "", "")
	if code != http.StatusOK {
		t.Fatalf("the assertion before the restart: %d %v", code, body)
	}
	next := body["refresh_token"].(string)
	e.app.Stop()

	logs := &syncBuffer{}
	MustApp(t, cfg, logs)
	if code, _, body := e.post(t, "/oauth2/token", refreshWithAssertion(next, assertion), "", ""); code != http.StatusUnauthorized {
		t.Fatalf("the same assertion after the restart: %d %v", code, body)
	}
	if !strings.Contains(logs.String(), "jti already used") {
		t.Fatalf("not refused as a replay:\n%s", logs)
	}
	if code, _, body := e.post(t, "/oauth2/token", refreshWithAssertion(next, e.assertion(t, "svc")), "", ""); code != http.StatusOK {
		t.Fatalf("a fresh assertion after the restart: %d %v", code, body)
	}
}

// TestOAuthAssertionWhileJTICacheIsDown: with the jti bucket gone, an
// assertion is refused as retryable (503 temporarily_unavailable with
// Retry-After), never accepted unchecked, and the failure is logged.
func TestOAuthAssertionWhileJTICacheIsDown(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	f := e.issue(t, "user-down", "svc")
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteKeyValue(t.Context(), jti.Bucket); err != nil {
		t.Fatal(err)
	}
	code, header, body := e.post(t, "/oauth2/token", refreshWithAssertion(f.RefreshToken, e.assertion(t, "svc")), "", "")
	if code != http.StatusServiceUnavailable || body["error"] != "temporarily_unavailable" || header.Get("Retry-After") == "" {
		t.Fatalf("with the jti bucket gone: %d %v %v", code, header, body)
	}
	if !strings.Contains(e.logs.String(), "oauth request unavailable") || !strings.Contains(e.logs.String(), "endpoint=token") {
		t.Fatalf("the failure was not logged:\n%s", e.logs)
	}
	if got := countTypes(familyEvents(t, e.nc, f.FamilyID))["token.rotated"]; got != 0 {
		t.Fatalf("the refresh went through: %d rotations", got)
	}
}

// TestOAuthLogsRefusedClients: a refused client authentication is logged
// with the claimed client id (made printable and short: it is the
// caller's input), the method, the reason and the remote address, and
// without the secret.
func TestOAuthLogsRefusedClients(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	refresh := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"rt1.x"}}
	e.post(t, "/oauth2/token", refresh, "web", e.secret+"-wrong")
	logs := e.logs.String()
	line := ""
	for l := range strings.Lines(logs) {
		if strings.Contains(l, "oauth client authentication refused") {
			line = l
		}
	}
	for _, want := range []string{"client_id=web ", "method=client_secret_basic", `why="wrong secret"`, "remote=127.0.0.1"} {
		if !strings.Contains(line, want) {
			t.Errorf("the refusal's log line lacks %s: %s", want, line)
		}
	}
	if strings.Contains(logs, e.secret) {
		t.Fatal("the secret reached the logs")
	}

	forged := "evil\nlevel=ERROR msg=forged" + strings.Repeat("x", 200)
	e.post(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"rt1.x"}, "client_id": {forged}}, "", "")
	logs = e.logs.String()
	if strings.Contains(logs, "\nlevel=ERROR msg=forged") || strings.Contains(logs, strings.Repeat("x", 60)) {
		t.Fatalf("the claimed client id went into the log unfiltered:\n%s", logs)
	}
	if !strings.Contains(logs, `client_id="evil?level=ERROR msg=forged`) || !strings.Contains(logs, `why="unknown client"`) {
		t.Fatalf("the claimed client id is not logged:\n%s", logs)
	}
}

// TestOAuthIssuerIsNormalised: an --issuer with a trailing slash is the
// same string in the metadata, in the iss of access tokens and in what
// client assertions must name (RFC 8414 section 3.3).
func TestOAuthIssuerIsNormalised(t *testing.T) {
	addr := freeAddr(t)
	parsed, err := parseConfig([]string{"--data-dir", t.TempDir(), "--http", "127.0.0.1:0", "--nats-listen", "127.0.0.1:-1",
		"--oauth-http", addr, "--issuer", "http://" + addr + "/"}, func(string) (string, bool) { return "", false }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		configure func(*Config)
	}{
		{"from the flag", func(c *Config) { *c = parsed }},
		// A Config built in code (an embedding program, a test) skips flag
		// parsing; tokend must normalise it all the same.
		{"set in code", func(c *Config) { c.Issuer += "/" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := mustOAuthEnv(t, tc.configure)
			md := e.metadata(t)
			if want := "http://" + e.app.OAuthAddr(); md["issuer"] != want || md["token_endpoint"] != want+"/oauth2/token" {
				t.Fatalf("metadata issuer %v, token endpoint %v; want %s", md["issuer"], md["token_endpoint"], want)
			}
			f := e.issue(t, "user-iss", "svc")
			code, _, body := e.post(t, "/oauth2/token", refreshWithAssertion(f.RefreshToken, e.o4wAssertion(t, "svc")), "", "")
			if code != http.StatusOK {
				t.Fatalf("an assertion for the metadata's issuer: %d %v", code, body)
			}
			claims, err := e.app.api.Access.Verify(body["access_token"].(string), time.Now())
			if err != nil || claims.Issuer != md["issuer"] {
				t.Fatalf("access token iss %q, metadata issuer %v (%v)", claims.Issuer, md["issuer"], err)
			}
		})
	}
}

// TestOAuthIssuerFromListener: --oauth-http without --issuer makes the
// listener's own URL the issuer, and the ready log line says so.
func TestOAuthIssuerFromListener(t *testing.T) {
	cfg, err := parseConfig([]string{"--data-dir", t.TempDir(), "--http", "127.0.0.1:0", "--nats-listen", "127.0.0.1:-1",
		"--oauth-http", "127.0.0.1:0"}, func(string) (string, bool) { return "", false }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	e := mustOAuthEnv(t, func(c *Config) { *c = cfg })
	want := "http://" + e.app.OAuthAddr()
	if md := e.metadata(t); md["issuer"] != want || md["token_endpoint"] != want+"/oauth2/token" {
		t.Fatalf("metadata %v, want issuer %s", md, want)
	}
	f := e.issue(t, "user-derived", "web")
	code, _, body := e.post(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {f.RefreshToken}}, "web", e.secret)
	if code != http.StatusOK {
		t.Fatalf("refresh: %d %v", code, body)
	}
	if claims, err := e.app.api.Access.Verify(body["access_token"].(string), time.Now()); err != nil || claims.Issuer != want {
		t.Fatalf("access token iss %q, want %s (%v)", claims.Issuer, want, err)
	}
	ready := ""
	for l := range strings.Lines(e.logs.String()) {
		if strings.Contains(l, "tokend ready") {
			ready = l
		}
	}
	for _, attr := range []string{"oauth_http=" + e.app.OAuthAddr(), "issuer=" + want, "issuer_derived=true"} {
		if !strings.Contains(ready, attr) {
			t.Errorf("the ready line lacks %s: %s", attr, ready)
		}
	}
	// Every address: no URL to derive.
	if _, err := parseConfig([]string{"--oauth-http", ":8443"}, func(string) (string, bool) { return "", false }, io.Discard); err == nil ||
		!strings.Contains(err.Error(), "--issuer") {
		t.Fatalf("--oauth-http :8443 without --issuer: %v", err)
	}
}

// TestOAuthAssertionUnderRolePermissions: tokend's role in the shipped
// ops/nats/auth.conf may use the jti bucket.
func TestOAuthAssertionUnderRolePermissions(t *testing.T) {
	addr := freeAddr(t)
	d := mustSecureDeployment(t, func(c *Config) { c.OAuthHTTP.Addr, c.Issuer = addr, "http://"+addr })
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: pub, KeyID: "svc-1", Use: "sig"}}})
	svc := domain.Client{ID: "svc", Type: domain.ClientConfidential, AuthMethod: domain.AuthPrivateKeyJWT, JWKS: jwks, Scopes: []string{"openid"}}
	if _, err := d.app.Clients().Put(t.Context(), svc, "", 0, registry.Actor{By: "test"}); err != nil {
		t.Fatal(err)
	}
	issued, err := d.app.api.Tokens.Issue(t.Context(), eventsIssue("user-perms", "svc"))
	if err != nil {
		t.Fatal(err)
	}
	e := &oauthEnv{app: d.app, base: "http://" + addr, key: priv}
	code, _, body := e.post(t, "/oauth2/token", refreshWithAssertion(issued.Token.Value(), e.o4wAssertion(t, "svc")), "", "")
	if code != http.StatusOK {
		t.Fatalf("private_key_jwt under the tokend role: %d %v", code, body)
	}
}
