//go:build interop

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/registry"
)

// interopScript checks tokend with stock Node OAuth clients
// (examples/interop/node); make interop-test installs their libraries.
const interopScript = "../../examples/interop/node/check.mjs"

// interopClient is a registered client as the script authenticates it.
type interopClient struct {
	ClientID     string          `json:"client_id"`
	AuthMethod   string          `json:"auth_method"`
	ClientSecret string          `json:"client_secret,omitempty"`
	PrivateJWK   json.RawMessage `json:"private_jwk,omitempty"`
}

// interopCheck is one line of the script's output.
type interopCheck struct {
	Lib    string          `json:"lib"`
	Check  string          `json:"check"`
	OK     bool            `json:"ok"`
	Detail json.RawMessage `json:"detail"`
}

// TestInterop: the stock Node clients, with their defaults, against
// --oauth-http, with --issuer given without and with a trailing slash.
// Every check the script prints is a subtest.
func TestInterop(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not installed; install Node.js 20 or later and run make interop-test")
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(interopScript), "node_modules")); err != nil {
		t.Fatal("the Node OAuth libraries are not installed: run make interop-test")
	}
	for _, tc := range []struct {
		name   string
		suffix string
	}{{"issuer_without_slash", ""}, {"issuer_with_slash", "/"}} {
		t.Run(tc.name, func(t *testing.T) {
			e := mustOAuthEnv(t, func(c *Config) { c.Issuer += tc.suffix })
			runInteropScript(t, node, mustInteropEnv(t, e))
		})
	}
}

// mustInteropEnv registers the private_key_jwt clients a Node service would
// (keys generated here, public JWKs without alg as jose's exportJWK writes
// them) and describes e for the script.
func mustInteropEnv(t *testing.T, e *oauthEnv) []byte {
	t.Helper()
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	keyClient := func(id string, key crypto.Signer) interopClient {
		public, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: id + "-1", Use: "sig"}}})
		c := domain.Client{ID: id, Type: domain.ClientConfidential, AuthMethod: domain.AuthPrivateKeyJWT, JWKS: public,
			Scopes: []string{"openid", "api:read", "api:write"}, Audiences: interopAudiences}
		if _, err := e.app.Clients().Put(t.Context(), c, "", 0, registry.Actor{By: "test"}); err != nil {
			t.Fatal(err)
		}
		private, err := jose.JSONWebKey{Key: key, KeyID: id + "-1"}.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		return interopClient{ClientID: id, AuthMethod: string(domain.AuthPrivateKeyJWT), PrivateJWK: private}
	}
	basic := interopClient{ClientID: "web", AuthMethod: string(domain.AuthSecretBasic), ClientSecret: e.secret}
	desc, err := json.Marshal(map[string]any{
		"issuer":    e.base,
		"resource":  interopAudiences[0],
		"issue_url": interopIssueHook(t, e),
		"clients": map[string]interopClient{
			"basic":    basic,
			"post":     {ClientID: "web-post", AuthMethod: string(domain.AuthSecretPost), ClientSecret: e.secret},
			"ed25519":  keyClient("node-ed25519", edKey),
			"es256":    keyClient("node-es256", ecKey),
			"public":   {ClientID: "spa", AuthMethod: string(domain.AuthNone)},
			"receiver": interopReceiver(t, e),
			"dpop":     interopDPoPClient(t, e),
		},
		"resource_server": interopResourceServer(t, e),
	})
	if err != nil {
		t.Fatal(err)
	}
	return desc
}

// interopResourceServer registers the API behind the first audience as a
// resource server, which may introspect the access tokens issued for it.
func interopResourceServer(t *testing.T, e *oauthEnv) interopClient {
	c := domain.Client{ID: "api-gateway", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretBasic,
		Scopes: []string{}, Audiences: []string{}, Resources: interopAudiences[:1]}
	if _, err := e.app.Clients().Put(t.Context(), c, domain.HashClientSecret(e.secret), 0, registry.Actor{By: "test"}); err != nil {
		t.Fatal(err)
	}
	return interopClient{ClientID: c.ID, AuthMethod: string(c.AuthMethod), ClientSecret: e.secret}
}

// interopReceiver registers an SSF receiver, which gets its access token
// with the client_credentials grant.
func interopReceiver(t *testing.T, e *oauthEnv) interopClient {
	c := domain.Client{ID: "siem", Type: domain.ClientConfidential, AuthMethod: domain.AuthSecretBasic,
		Scopes: []string{}, Audiences: []string{}, Receiver: domain.ReceiverAll}
	if _, err := e.app.Clients().Put(t.Context(), c, domain.HashClientSecret(e.secret), 0, registry.Actor{By: "test"}); err != nil {
		t.Fatal(err)
	}
	return interopClient{ClientID: c.ID, AuthMethod: string(c.AuthMethod), ClientSecret: e.secret}
}

// interopDPoPClient registers a public client whose families are bound to
// a DPoP key and whose proofs must carry tokend's nonce (RFC 9449 sections
// 5.2 and 8), so the script's refreshes go through the nonce round trip.
func interopDPoPClient(t *testing.T, e *oauthEnv) interopClient {
	c := domain.Client{ID: "spa-dpop", Type: domain.ClientPublic, DPoPBound: true, DPoPRequireNonce: true,
		Scopes: []string{"openid", "api:read", "api:write"}, Audiences: interopAudiences}
	if _, err := e.app.Clients().Put(t.Context(), c, "", 0, registry.Actor{By: "test"}); err != nil {
		t.Fatal(err)
	}
	return interopClient{ClientID: c.ID, AuthMethod: string(domain.AuthNone)}
}

// interopAudiences are the audiences of every family the script gets.
var interopAudiences = []string{"https://api.example.com", "https://billing.example.com"}

// interopIssueHook serves the script's issue_url: a family issued over NATS
// on demand, so a check can introspect right after the issue; bound to the
// DPoP key of the thumbprint dpop_jkt when the script sends one, as an
// authorization server does after its code exchange.
func interopIssueHook(t *testing.T, e *oauthEnv) string {
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ClientID string `json:"client_id"`
			DPoPJKT  string `json:"dpop_jkt"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body, _ := json.Marshal(wire.IssueRequest{Subject: "user-interop", ClientID: req.ClientID,
			Scope: "openid api:read api:write", Audience: interopAudiences, DPoPJKT: req.DPoPJKT})
		msg, err := e.nc.Request("tokens.cmd.issue", body, 10*time.Second)
		switch {
		case err != nil:
			http.Error(w, err.Error(), http.StatusBadGateway)
		case msg.Header.Get("Nats-Service-Error-Code") != "":
			http.Error(w, string(msg.Data), http.StatusBadGateway)
		default:
			w.Header().Set("Content-Type", "application/json")
			w.Write(msg.Data)
		}
	}))
	t.Cleanup(hook.Close)
	return hook.URL
}

// runInteropScript runs the script on desc and reports each of its checks
// as a subtest.
func runInteropScript(t *testing.T, node string, desc []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, filepath.Base(interopScript))
	cmd.Dir = filepath.Dir(interopScript)
	cmd.Stdin = bytes.NewReader(desc)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()

	checks, failed := 0, 0
	lines := bufio.NewScanner(&stdout)
	lines.Buffer(nil, 1<<20)
	for lines.Scan() {
		var c interopCheck
		if err := json.Unmarshal(lines.Bytes(), &c); err != nil || c.Lib == "" || c.Check == "" {
			t.Errorf("not a check: %q", lines.Text())
			continue
		}
		checks++
		if !c.OK {
			failed++
		}
		t.Run(c.Lib+"/"+c.Check, func(t *testing.T) {
			if !c.OK {
				t.Errorf("%s", c.Detail)
				return
			}
			t.Logf("%s", c.Detail)
		})
	}
	// The script exits 1 when a check failed; one that stopped early says
	// why on stderr.
	if runErr != nil && (failed == 0 || stderr.Len() > 0) || checks == 0 {
		t.Errorf("node %s: %v after %d checks\n%s", interopScript, runErr, checks, stderr.String())
	}
}
