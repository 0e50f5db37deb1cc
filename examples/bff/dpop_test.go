package main

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api/apitest"
	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
	"github.com/tokend/tokend/events/eventstest"
)

// TestAPIRequiresDPoPProof: a token bound to a DPoP key is taken only with
// the DPoP scheme and a proof by that key for this request and this token;
// an unbound token only as a bearer token. The tokens are signed by a key
// of the test's, in the shape of tokend's bound access tokens.
func TestAPIRequiresDPoPProof(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: pub, KeyID: "k1", Algorithm: string(jose.EdDSA)}}})
	a := &api{issuer: "https://tokend.test", audience: testAudience,
		keys: &keySet{fetch: func(context.Context) (json.RawMessage, error) { return jwks, nil }, now: time.Now}}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: priv},
		(&jose.SignerOptions{}).WithType("at+jwt").WithHeader("kid", "k1"))
	if err != nil {
		t.Fatal(err)
	}
	mint := func(jkt string) client.AccessToken {
		c := map[string]any{"iss": a.issuer, "aud": testAudience, "sub": "alice", "client_id": clientID,
			"scope": scope, "exp": time.Now().Add(time.Minute).Unix(), "iat": time.Now().Unix()}
		typ := "Bearer"
		if jkt != "" {
			c["cnf"], typ = map[string]string{"jkt": jkt}, client.TokenTypeDPoP
		}
		raw, err := jwt.Signed(signer).Claims(c).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return client.AccessToken{Token: raw, TokenType: typ}
	}
	key, other := newKey(t), newKey(t)
	bound, unbound := mint(key.JKT()), mint("")
	me := testAudience + "/me"

	for name, c := range map[string]struct {
		prepare func(r *http.Request)
		want    int
	}{
		"bound, with its proof":      {func(r *http.Request) { authorize(t, key, r, bound) }, http.StatusOK},
		"unbound, as bearer":         {func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+unbound.Token) }, http.StatusOK},
		"bound, as bearer":           {func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+bound.Token) }, http.StatusUnauthorized},
		"bound, no proof":            {func(r *http.Request) { r.Header.Set("Authorization", "DPoP "+bound.Token) }, http.StatusUnauthorized},
		"bound, another key's proof": {func(r *http.Request) { authorize(t, other, r, bound) }, http.StatusUnauthorized},
		"bound, proof for another token": {func(r *http.Request) {
			authorize(t, key, r, bound)
			r.Header.Set("DPoP", proofFor(t, key, http.MethodGet, me, unbound.Token))
		}, http.StatusUnauthorized},
		"bound, proof for another method": {func(r *http.Request) {
			authorize(t, key, r, bound)
			r.Header.Set("DPoP", proofFor(t, key, http.MethodPost, me, bound.Token))
		}, http.StatusUnauthorized},
		"bound, proof for another URL": {func(r *http.Request) {
			authorize(t, key, r, bound)
			r.Header.Set("DPoP", proofFor(t, key, http.MethodGet, "https://other.test/me", bound.Token))
		}, http.StatusUnauthorized},
		"unbound, as DPoP": {func(r *http.Request) {
			r.Header.Set("Authorization", "DPoP "+unbound.Token)
			r.Header.Set("DPoP", proofFor(t, key, http.MethodGet, me, unbound.Token))
		}, http.StatusUnauthorized},
	} {
		r := httptest.NewRequest(http.MethodGet, me, nil)
		c.prepare(r)
		w := httptest.NewRecorder()
		a.me(w, r)
		if w.Code != c.want {
			t.Errorf("%s: %d, want %d", name, w.Code, c.want)
		}
	}
}

func newKey(t *testing.T) *client.DPoP {
	t.Helper()
	k, err := client.NewDPoP(nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func authorize(t *testing.T, key *client.DPoP, r *http.Request, at client.AccessToken) {
	t.Helper()
	if err := key.Authorize(r, at); err != nil {
		t.Fatal(err)
	}
}

func proofFor(t *testing.T, key *client.DPoP, method, url, token string) string {
	t.Helper()
	p, err := key.Proof(method, url, token)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBFFWithDPoP runs the demo with dpop on: the sign-in issues the
// family bound to a key (dpop_jkt), and the session's refreshes carry
// proofs by that key, for tokend's token endpoint. (The tokend of this
// test does not check proofs; that the family refuses other keys is
// tokend's test.)
func TestBFFWithDPoP(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: 2 * time.Second})
	var mu sync.Mutex
	var issues []wire.IssueRequest
	var refreshes []wire.RefreshRequest
	nc := td.Connect(t)
	for subject, record := range map[string]func([]byte){
		"tokens.cmd.issue": func(data []byte) {
			var r wire.IssueRequest
			_ = json.Unmarshal(data, &r)
			issues = append(issues, r)
		},
		"tokens.cmd.refresh": func(data []byte) {
			var r wire.RefreshRequest
			_ = json.Unmarshal(data, &r)
			refreshes = append(refreshes, r)
		},
	} {
		if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
			mu.Lock()
			defer mu.Unlock()
			record(m.Data)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	base := startBFFWith(t, td, config{dpop: true})
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	resp, err := browser.PostForm(base+"/signin", url.Values{"user": {demoUser}, "password": {demoPassword}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/" {
		t.Fatalf("sign-in: %d at %s", resp.StatusCode, resp.Request.URL)
	}
	// The profile page calls the API with each access token; once the
	// first expired, a refresh has been made.
	eventstest.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		resp, err := browser.Get(base + "/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("profile: %d", resp.StatusCode)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(refreshes) == 0 {
			return fmt.Errorf("no refresh yet")
		}
		return nil
	})

	mu.Lock()
	defer mu.Unlock()
	if len(issues) != 1 || issues[0].DPoPJKT == "" {
		t.Fatalf("issue requests: %+v", issues)
	}
	for i, r := range refreshes {
		jws, err := jose.ParseSigned(r.DPoPProof, []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			t.Fatalf("refresh %d: %v", i, err)
		}
		jwk := jws.Signatures[0].Protected.JSONWebKey
		if _, err := jws.Verify(jwk); err != nil {
			t.Fatalf("refresh %d: %v", i, err)
		}
		thumb, _ := jwk.Thumbprint(crypto.SHA256)
		if base64.RawURLEncoding.EncodeToString(thumb) != issues[0].DPoPJKT || r.DPoPURL != td.Options().Issuer+"/oauth2/token" {
			t.Fatalf("refresh %d: not proved by the family's key for the token endpoint (htu %q)", i, r.DPoPURL)
		}
	}
}
