package main

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/registry"
)

// registerReceivers adds SSF receivers to e, one per client authentication
// method: siem (client_secret_basic, every event), siem-post
// (client_secret_post, its own) and siem-jwt (private_key_jwt with e's key,
// its own).
func (e *oauthEnv) registerReceivers(t *testing.T) {
	t.Helper()
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: e.key.Public(), KeyID: "svc-1", Use: "sig"}}})
	for _, c := range []struct {
		client domain.Client
		hash   string
	}{
		{domain.Client{ID: "siem", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretBasic, Receiver: domain.ReceiverAll}, domain.HashClientSecret(e.secret)},
		{domain.Client{ID: "siem-post", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretPost, Receiver: domain.ReceiverOwn}, domain.HashClientSecret(e.secret)},
		{domain.Client{ID: "siem-jwt", Type: domain.ClientConfidential, AuthMethod: domain.AuthPrivateKeyJWT, JWKS: jwks, Receiver: domain.ReceiverOwn}, ""},
	} {
		c.client.Scopes, c.client.Audiences = []string{}, []string{}
		if _, err := e.app.Clients().Put(t.Context(), c.client, c.hash, 0, registry.Actor{By: "test"}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestOAuthClientCredentials: an SSF receiver gets an access token with
// grant_type=client_credentials by each client authentication method,
// for the SSF scopes it asks for (both by default); other clients are
// unauthorized_client. The token is a receiver's, never a family's, and a
// family's access token is never a receiver's.
func TestOAuthClientCredentials(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	e.registerReceivers(t)
	access := e.app.api.Access
	grant := func(extra url.Values) url.Values {
		f := url.Values{"grant_type": {"client_credentials"}}
		for k, v := range extra {
			f[k] = v
		}
		return f
	}
	type answer struct {
		code   int
		header http.Header
		body   map[string]any
	}
	post := func(form url.Values, user string) answer {
		t.Helper()
		code, header, body := e.post(t, "/oauth2/token", form, user, e.secret)
		return answer{code, header, body}
	}
	wantToken := func(a answer, client, scope string) string {
		t.Helper()
		if a.code != http.StatusOK || a.body["token_type"] != "Bearer" || a.body["scope"] != scope ||
			a.body["expires_in"] != float64(300) || a.header.Get("Cache-Control") != "no-store" {
			t.Fatalf("%d %v %v", a.code, a.header, a.body)
		}
		if _, ok := a.body["refresh_token"]; ok {
			t.Fatalf("a refresh token with client_credentials (RFC 6749 4.4.3): %v", a.body)
		}
		tok := a.body["access_token"].(string)
		id, scopes, err := access.VerifyReceiverToken(tok, time.Now())
		if err != nil || id != client || domain.ScopeString(scopes) != scope {
			t.Fatalf("VerifyReceiverToken: %q %q %v", id, scopes, err)
		}
		if _, err := access.Verify(tok, time.Now()); err == nil {
			t.Fatal("a receiver token verified as a family's access token")
		}
		return tok
	}
	wantError := func(a answer, status int, code string) {
		t.Helper()
		if a.code != status || a.body["error"] != code {
			t.Fatalf("want %d %s, got %d %v", status, code, a.code, a.body)
		}
	}

	basic := wantToken(post(grant(nil), "siem"), "siem", "ssf.read ssf.manage")
	wantToken(post(grant(url.Values{"client_id": {"siem-post"}, "client_secret": {e.secret}}), ""), "siem-post", "ssf.read ssf.manage")
	// RFC 6749 2.3.1: a client_secret_post client may use Basic too.
	wantToken(post(grant(url.Values{"scope": {"ssf.manage"}}), "siem-post"), "siem-post", "ssf.manage")
	wantToken(post(grant(url.Values{"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion": {e.assertion(t, "siem-jwt")}, "scope": {"ssf.read"}}), ""), "siem-jwt", "ssf.read")
	wantToken(post(grant(url.Values{"scope": {"ssf.manage ssf.read"}, "resource": {e.base}}), "siem"), "siem", "ssf.manage ssf.read")

	wantError(post(grant(url.Values{"scope": {"openid"}}), "siem"), http.StatusBadRequest, "invalid_scope")
	wantError(post(grant(url.Values{"scope": {"ssf.read api:read"}}), "siem"), http.StatusBadRequest, "invalid_scope")
	wantError(post(grant(url.Values{"resource": {"https://api.example.com"}}), "siem"), http.StatusBadRequest, "invalid_target")
	wantError(post(grant(nil), "web"), http.StatusBadRequest, "unauthorized_client")
	wantError(post(grant(url.Values{"client_id": {"spa"}}), ""), http.StatusBadRequest, "unauthorized_client")
	wantError(post(grant(url.Values{"client_id": {"siem"}}), ""), http.StatusUnauthorized, "invalid_client")
	code, _, body := e.post(t, "/oauth2/token", grant(nil), "siem", e.secret+"x")
	wantError(answer{code, nil, body}, http.StatusUnauthorized, "invalid_client")
	if !strings.Contains(e.logs.String(), "oauth client_credentials refused: the client is not an SSF receiver") {
		t.Fatal("the refused grant was not logged")
	}

	// A family's access token is not a receiver's.
	f := e.issue(t, "siem", "web")
	if _, _, err := access.VerifyReceiverToken(f.AccessToken, time.Now()); err == nil {
		t.Fatal("a family's access token verified as a receiver's")
	}

	// Introspection: active to its own client only, without sid; revoking
	// it does nothing (it is no family's).
	introspect := func(token, user string) map[string]any {
		t.Helper()
		code, _, body := e.post(t, "/oauth2/introspect", url.Values{"token": {token}}, user, e.secret)
		if code != http.StatusOK {
			t.Fatalf("introspect: %d %v", code, body)
		}
		return body
	}
	got := introspect(basic, "siem")
	if got["active"] != true || got["client_id"] != "siem" || got["sub"] != "siem" || got["token_use"] != "access_token" ||
		got["token_type"] != "Bearer" || got["scope"] != "ssf.read ssf.manage" || got["iss"] != e.base || got["jti"] == nil {
		t.Fatalf("introspected by its client: %v", got)
	}
	if _, ok := got["sid"]; ok || !slices.Equal(got["aud"].([]any), []any{e.base}) {
		t.Fatalf("sid or aud: %v", got)
	}
	// Not even to a resource server for the issuer's own URL: the token is
	// for tokend only.
	gw := domain.Client{ID: "gw", Type: domain.ClientConfidential, Scopes: []string{}, Audiences: []string{}, Resources: []string{e.base}}
	if _, err := e.app.Clients().Put(t.Context(), gw, domain.HashClientSecret(e.secret), 0, registry.Actor{By: "test"}); err != nil {
		t.Fatal(err)
	}
	for _, other := range []string{"web", "gw"} {
		if got := introspect(basic, other); len(got) != 1 || got["active"] != false {
			t.Fatalf("introspected by %s: %v", other, got)
		}
	}
	if code, _, _ := e.post(t, "/oauth2/revoke", url.Values{"token": {basic}}, "siem", e.secret); code != http.StatusOK {
		t.Fatalf("revoke: %d", code)
	}
	if got := introspect(basic, "siem"); got["active"] != true {
		t.Fatalf("after a revocation: %v", got)
	}

	// Once the client is no receiver, its tokens are inactive.
	entry, err := e.app.Clients().Get(t.Context(), "siem")
	if err != nil {
		t.Fatal(err)
	}
	c := entry.Client
	c.Receiver = domain.ReceiverNone
	if _, err := e.app.Clients().Put(t.Context(), c, "", entry.Revision, registry.Actor{By: "test"}); err != nil {
		t.Fatal(err)
	}
	if got := introspect(basic, "siem"); len(got) != 1 || got["active"] != false {
		t.Fatalf("introspected once the client is no receiver: %v", got)
	}
	wantError(post(grant(nil), "siem"), http.StatusBadRequest, "unauthorized_client")

	// Counted as token requests, by outcome.
	for outcome, want := range map[string]float64{"ok": 5, "unauthorized_client": 3, "invalid_scope": 2, "invalid_target": 1, "invalid_client": 2} {
		if got := scrapeValue(t, e.app, "tokend_oauth_requests_total", "endpoint", "token", "outcome", outcome); got != want {
			t.Errorf("tokend_oauth_requests_total{endpoint=token,outcome=%s} = %v, want %v", outcome, got, want)
		}
	}
}
