package main

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokend/tokend/api/apitest"
	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
)

const testAudience = "https://api.test"

// demoAPI serves the demo API for testAudience on td, with a key set that
// counts its fetches and runs on a clock the test moves.
type demoAPI struct {
	url     string
	c       *client.Client
	keys    *keySet
	fetches atomic.Int32

	mu  sync.Mutex
	now time.Time
}

func newDemoAPI(t *testing.T, td *apitest.Tokend, issuer string) *demoAPI {
	t.Helper()
	d := &demoAPI{c: client.New(td.Connect(t), ""), now: time.Now()}
	d.keys = &keySet{
		fetch: func(ctx context.Context) (json.RawMessage, error) {
			d.fetches.Add(1)
			return d.c.Keys(ctx)
		},
		now: func() time.Time {
			d.mu.Lock()
			defer d.mu.Unlock()
			return d.now
		},
	}
	srv := httptest.NewServer(http.HandlerFunc((&api{issuer: issuer, audience: testAudience, keys: d.keys}).me))
	t.Cleanup(srv.Close)
	d.url = srv.URL
	return d
}

func (d *demoAPI) advance(by time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.now = d.now.Add(by)
}

// call sends token as a bearer token (none if empty) and returns the status
// and the answer.
func (d *demoAPI) call(t *testing.T, token string) (int, identity) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, d.url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var me identity
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&me); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, me
}

func issue(t *testing.T, c *client.Client, scope string, audience ...string) wire.TokenReply {
	t.Helper()
	r, err := c.Issue(context.Background(), wire.IssueRequest{Subject: "alice", ClientID: clientID, Scope: scope, Audience: audience})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// withKid returns token with its header's key id replaced (and so its
// signature broken).
func withKid(t *testing.T, token, kid string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	data, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		t.Fatal(err)
	}
	var h map[string]any
	if err := json.Unmarshal(data, &h); err != nil {
		t.Fatal(err)
	}
	h["kid"] = kid
	data, _ = json.Marshal(h)
	parts[0] = base64.RawURLEncoding.EncodeToString(data)
	return strings.Join(parts, ".")
}

// TestAPIVerifiesAccessTokens: the demo API accepts tokend's access tokens
// for its audience with api:read, and nothing else; the key set is
// fetched once and kept.
func TestAPIVerifiesAccessTokens(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	d := newDemoAPI(t, td, td.Options().Issuer)
	good := issue(t, d.c, scope, testAudience)

	if status, me := d.call(t, good.AccessToken); status != http.StatusOK || me.Subject != "alice" ||
		me.FamilyID != good.FamilyID || me.ClientID != clientID || me.Scope != scope {
		t.Fatalf("a good token: %d %+v", status, me)
	}
	sig := strings.LastIndexByte(good.AccessToken, '.') + 1
	tampered := good.AccessToken[:sig] + strings.Map(func(r rune) rune {
		if r == 'A' {
			return 'B'
		}
		return 'A'
	}, good.AccessToken[sig:])
	for name, c := range map[string]struct {
		token string
		want  int
	}{
		"no token":          {"", http.StatusUnauthorized},
		"not a JWT":         {"not-a-jwt", http.StatusUnauthorized},
		"signature changed": {tampered, http.StatusUnauthorized},
		"another audience":  {issue(t, d.c, scope, "https://other.test").AccessToken, http.StatusUnauthorized},
		"no api:read":       {issue(t, d.c, "profile", testAudience).AccessToken, http.StatusForbidden},
		"a refresh token":   {good.RefreshToken, http.StatusUnauthorized},
	} {
		if status, _ := d.call(t, c.token); status != c.want {
			t.Errorf("%s: %d, want %d", name, status, c.want)
		}
	}
	if n := d.fetches.Load(); n != 1 {
		t.Fatalf("the key set was fetched %d times, want once", n)
	}

	other := newDemoAPI(t, td, "https://another-issuer.test")
	if status, _ := other.call(t, good.AccessToken); status != http.StatusUnauthorized {
		t.Fatalf("another issuer's API: %d", status)
	}
}

// TestAPIRefetchesKeysForUnknownKid: a token signed with a key the cached
// set lacks (tokend rotated its keys) makes the API fetch the set again,
// at most once per minRefetch, so made-up key ids cannot flood tokend.
func TestAPIRefetchesKeysForUnknownKid(t *testing.T) {
	td := apitest.Start(t, apitest.Options{AccessTTL: time.Minute})
	d := newDemoAPI(t, td, td.Options().Issuer)
	tok := issue(t, d.c, scope, testAudience).AccessToken

	// The cache holds an older set, fetched just now.
	old, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	d.keys.mu.Lock()
	d.keys.set = jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: old, KeyID: "old", Algorithm: string(jose.EdDSA)}}}
	d.keys.fetched = d.keys.now()
	d.keys.mu.Unlock()

	if status, _ := d.call(t, tok); status != http.StatusUnauthorized || d.fetches.Load() != 0 {
		t.Fatalf("within minRefetch of the last fetch: %d, %d fetches", status, d.fetches.Load())
	}
	d.advance(minRefetch)
	if status, _ := d.call(t, tok); status != http.StatusOK || d.fetches.Load() != 1 {
		t.Fatalf("after minRefetch: %d, %d fetches", status, d.fetches.Load())
	}

	made := withKid(t, tok, "made-up")
	for range 3 {
		if status, _ := d.call(t, made); status != http.StatusUnauthorized {
			t.Fatalf("a made-up key id: %d", status)
		}
	}
	if n := d.fetches.Load(); n != 1 {
		t.Fatalf("made-up key ids caused %d fetches", n-1)
	}
	d.advance(minRefetch)
	d.call(t, made)
	if n := d.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want one more after minRefetch", n)
	}
}
