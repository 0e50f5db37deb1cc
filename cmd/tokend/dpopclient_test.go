package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/dpop"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/examples/dpopclient"
	"github.com/tokend/tokend/registry"
)

// exchangeLog records what tokend answered each request of a client: the
// status and the OAuth error, if any.
type exchangeLog struct {
	mu      sync.Mutex
	answers []string
}

func (l *exchangeLog) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(raw))
	var body struct {
		Error string `json:"error"`
	}
	json.Unmarshal(raw, &body)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.answers = append(l.answers, fmt.Sprintf("%d %s", resp.StatusCode, body.Error))
	return resp, err
}

func (l *exchangeLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.answers
	l.answers = nil
	return out
}

// TestDPoPOutsideClient is issue 21's first proof point in Go: a DPoP
// client that no one here wrote (examples/dpopclient: from RFC 9449, on
// another JOSE library, importing nothing of tokend, under a stock
// golang.org/x/oauth2) refreshes a family bound to its key over HTTP, for
// a client that must send tokend's nonces: the first proof, without one,
// is refused with use_dpop_nonce, the retry with the nonce of the refusal
// passes, and the later refreshes carry the nonce of the previous reply.
// Its access tokens are DPoP tokens bound to its key (cnf.jkt, the RFC
// 7638 thumbprint jwx computes), every rotation records the binding, and
// its resource-request proof (ath) passes tokend's own proof checks.
// The current refresh token presented by a second client with another
// key is theft: tokend records token.key_mismatch and revokes the family.
func TestDPoPOutsideClient(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	mobile := domain.Client{ID: "mobile", Type: domain.ClientPublic, DPoPBound: true, DPoPRequireNonce: true,
		Scopes: []string{"openid", "api:read", "api:write"}, Audiences: []string{"https://api.example.com", "https://billing.example.com"}}
	if _, err := e.app.Clients().Put(t.Context(), mobile, "", 0, registry.Actor{By: "test"}); err != nil {
		t.Fatal(err)
	}
	key, err := dpopclient.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	jkt, _ := key.Thumbprint()
	// The authorization server verified jkt at its code exchange and
	// issues the family bound to it.
	r := call(t, e.nc, "tokens.cmd.issue", wire.IssueRequest{Subject: "user-dpop", ClientID: "mobile", Scope: "openid api:read",
		Audience: []string{"https://api.example.com"}, DPoPJKT: jkt})
	if r.errCode != "" {
		t.Fatalf("issue: %s", r.raw)
	}
	family := r.token

	owner := dpopclient.NewClient(key)
	ownerLog := &exchangeLog{}
	owner.Base = ownerLog
	cfg := &oauth2.Config{ClientID: "mobile", Endpoint: oauth2.Endpoint{TokenURL: e.base + "/oauth2/token", AuthStyle: oauth2.AuthStyleInParams}}
	refreshWith := func(c *dpopclient.Client, refreshToken string) (*oauth2.Token, error) {
		expired := &oauth2.Token{RefreshToken: refreshToken, Expiry: time.Now().Add(-time.Minute)}
		return c.TokenSource(context.Background(), cfg, expired).Token()
	}
	current := family.RefreshToken
	var last *oauth2.Token
	for i := range 3 {
		tok, err := refreshWith(owner, current)
		if err != nil {
			t.Fatalf("refresh %d: %v", i, err)
		}
		if tok.Type() != "DPoP" || tok.RefreshToken == "" || tok.RefreshToken == current {
			t.Fatalf("refresh %d: token_type %q, a new refresh token %t", i, tok.TokenType, tok.RefreshToken != current)
		}
		if err := key.CheckBinding(tok.AccessToken); err != nil {
			t.Fatalf("refresh %d: %v", i, err)
		}
		if claims, err := e.app.api.Access.Verify(tok.AccessToken, time.Now()); err != nil || claims.SID != family.FamilyID {
			t.Fatalf("refresh %d: the access token does not verify: %+v %v", i, claims, err)
		}
		want := []string{"200 "}
		if i == 0 {
			want = []string{"400 use_dpop_nonce", "200 "}
		}
		if got := ownerLog.take(); !slices.Equal(got, want) {
			t.Fatalf("refresh %d: tokend answered %q, want %q", i, got, want)
		}
		current, last = tok.RefreshToken, tok
	}

	// A resource request with the last access token: the client's proof
	// carries its ath, and tokend's own verifier, as a resource server of
	// the deployment would use it, accepts the proof for the token's key.
	verifier := &dpop.Verifier{Replay: e.app.usedIDs}
	resource := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, accessToken, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		claims, err := e.app.api.Access.Verify(accessToken, time.Now())
		if err != nil || scheme != "DPoP" || claims.Confirmation == nil {
			http.Error(w, fmt.Sprintf("scheme %q, claims %+v, %v", scheme, claims, err), http.StatusUnauthorized)
			return
		}
		proof, err := verifier.Verify(r.Context(), dpop.Request{Proof: r.Header.Get("DPoP"), Method: r.Method,
			URL: "http://" + r.Host + r.URL.Path, AccessToken: accessToken})
		if err != nil || proof.JKT != claims.Confirmation.JKT {
			http.Error(w, fmt.Sprintf("proof by %q for a token of %q: %v", proof.JKT, claims.Confirmation.JKT, err), http.StatusUnauthorized)
		}
	}))
	defer resource.Close()
	resp, err := owner.HTTPClient(oauth2.StaticTokenSource(last)).Get(resource.URL + "/items?page=1")
	if err != nil {
		t.Fatal(err)
	}
	refusal, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the resource request: %d %s", resp.StatusCode, refusal)
	}

	evs := familyEvents(t, e.nc, family.FamilyID)
	rotated := 0
	for _, ev := range evs {
		if ev.DPoPJKT != jkt {
			t.Errorf("%s carries dpop_jkt %q, want the key's %q", ev.Type, ev.DPoPJKT, jkt)
		}
		if ev.Type == "token.rotated" {
			rotated++
		}
	}
	if rotated != 3 {
		t.Fatalf("%d token.rotated events, want 3: %v", rotated, countTypes(evs))
	}

	// The current refresh token, stolen and presented with another key.
	thiefKey, _ := dpopclient.GenerateKey()
	thiefJKT, _ := thiefKey.Thumbprint()
	_, err = refreshWith(dpopclient.NewClient(thiefKey), current)
	var refused *oauth2.RetrieveError
	if !errors.As(err, &refused) || refused.ErrorCode != "invalid_grant" {
		t.Fatalf("the thief's refresh: %v, want invalid_grant", err)
	}
	eventstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		evs := familyEvents(t, e.nc, family.FamilyID)
		mismatch := slices.IndexFunc(evs, func(ev storedEvent) bool { return ev.Type == "token.key_mismatch" })
		revoked := slices.IndexFunc(evs, func(ev storedEvent) bool { return ev.Type == "family.revoked" })
		if mismatch < 0 || revoked < mismatch {
			return fmt.Errorf("events %v, want token.key_mismatch then family.revoked", countTypes(evs))
		}
		if m := evs[mismatch]; m.DPoPJKT != jkt || m.PresentedJKT != thiefJKT {
			return fmt.Errorf("token.key_mismatch: dpop_jkt %q presented_jkt %q, want %q and %q", m.DPoPJKT, m.PresentedJKT, jkt, thiefJKT)
		}
		if reason := evs[revoked].Reason; reason != domain.ReasonDPoPKeyMismatch {
			return fmt.Errorf("family.revoked reason %q", reason)
		}
		return nil
	})
	// The family is gone for its owner too.
	if _, err := refreshWith(owner, current); !errors.As(err, &refused) || refused.ErrorCode != "invalid_grant" {
		t.Fatalf("the owner after the theft: %v, want invalid_grant", err)
	}
}
