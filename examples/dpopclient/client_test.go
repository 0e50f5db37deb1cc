package dpopclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

// tokenServer is a token endpoint that requires its latest nonce in every
// proof (RFC 9449 section 8), answers a new one with every reply, and
// rotates refresh tokens.
type tokenServer struct {
	t         *testing.T
	tokenType string // what it answers; DPoP unless set
	mu        sync.Mutex
	nonce     int
	requests  []verifiedProof
	refused   int
}

func (s *tokenServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := verifyProof(s.t, r.Header.Get("DPoP"))
	s.requests = append(s.requests, p)
	current := fmt.Sprintf("nonce-%d", s.nonce)
	w.Header().Set("Content-Type", "application/json")
	if p.Claims.Nonce != current {
		s.refused++
		s.nonce++
		w.Header().Set("DPoP-Nonce", fmt.Sprintf("nonce-%d", s.nonce))
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":"use_dpop_nonce","error_description":"a nonce is required"}`)
		return
	}
	if r.PostFormValue("grant_type") != "refresh_token" || r.PostFormValue("client_id") != "spa" {
		s.t.Errorf("form %v", r.PostForm)
	}
	s.nonce++
	w.Header().Set("DPoP-Nonce", fmt.Sprintf("nonce-%d", s.nonce))
	tokenType := s.tokenType
	if tokenType == "" {
		tokenType = "DPoP"
	}
	json.NewEncoder(w).Encode(map[string]any{"access_token": "at-" + current, "token_type": tokenType, "expires_in": 300,
		"refresh_token": "rt-" + current})
}

func refreshOnce(c *Client, tokenURL, refreshToken string) (*oauth2.Token, error) {
	cfg := &oauth2.Config{ClientID: "spa", Endpoint: oauth2.Endpoint{TokenURL: tokenURL, AuthStyle: oauth2.AuthStyleInParams}}
	expired := &oauth2.Token{RefreshToken: refreshToken, Expiry: time.Now().Add(-time.Minute)}
	return c.TokenSource(context.Background(), cfg, expired).Token()
}

// TestRefreshWithNonce: x/oauth2 refreshes through the Client three times;
// the first proof has no nonce and is refused with use_dpop_nonce, the
// retry carries the nonce of the refusal, and the later refreshes carry
// the nonce of the previous reply, so they are not refused.
func TestRefreshWithNonce(t *testing.T) {
	s := &tokenServer{t: t}
	srv := httptest.NewServer(s)
	defer srv.Close()
	k, _ := GenerateKey()
	jkt, _ := k.Thumbprint()
	c := NewClient(k)
	rt := "rt-0"
	for i := range 3 {
		tok, err := refreshOnce(c, srv.URL+"/token?x=1", rt)
		if err != nil {
			t.Fatalf("refresh %d: %v", i, err)
		}
		if tok.Type() != "DPoP" || tok.RefreshToken == rt {
			t.Fatalf("refresh %d: %+v", i, tok)
		}
		rt = tok.RefreshToken
	}
	if len(s.requests) != 4 || s.refused != 1 {
		t.Fatalf("%d requests, %d refused; want 4 and 1", len(s.requests), s.refused)
	}
	for i, p := range s.requests {
		want := fmt.Sprintf("nonce-%d", i)
		if i == 0 {
			want = ""
		}
		if p.Claims.Nonce != want || p.Claims.HTM != "POST" || p.Claims.HTU != srv.URL+"/token" || p.Claims.ATH != "" || p.JKT != jkt {
			t.Errorf("request %d: proof %+v, want nonce %q", i, p, want)
		}
	}
	if got := c.Nonce(mustParse(t, srv.URL)); got != "nonce-4" {
		t.Fatalf("kept nonce %q", got)
	}
}

// TestNonceRetryOnce: a server that refuses every nonce gets the request
// twice, and the refusal reaches x/oauth2.
func TestNonceRetryOnce(t *testing.T) {
	s := &tokenServer{t: t}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.nonce += 10 // never the one the client has
		s.mu.Unlock()
		s.ServeHTTP(w, r)
	}))
	defer srv.Close()
	k, _ := GenerateKey()
	_, err := refreshOnce(NewClient(k), srv.URL, "rt-0")
	var refused *oauth2.RetrieveError
	if !errors.As(err, &refused) || refused.ErrorCode != "use_dpop_nonce" || len(s.requests) != 2 {
		t.Fatalf("%v after %d requests", err, len(s.requests))
	}
}

// TestRefusesUnboundToken: a reply with token_type Bearer means the
// server ignored the proof.
func TestRefusesUnboundToken(t *testing.T) {
	srv := httptest.NewServer(&tokenServer{t: t, tokenType: "Bearer"})
	defer srv.Close()
	k, _ := GenerateKey()
	if _, err := refreshOnce(NewClient(k), srv.URL, "rt-0"); !errors.Is(err, ErrNotBound) {
		t.Fatalf("%v, want ErrNotBound", err)
	}
}

// TestResourceRequest: a resource request through HTTPClient carries the
// access token as DPoP and a proof with its ath; a resource server's
// use_dpop_nonce challenge (RFC 9449 section 9) is answered once.
func TestResourceRequest(t *testing.T) {
	k, _ := GenerateKey()
	var proofs []verifiedProof
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := verifyProof(t, r.Header.Get("DPoP"))
		proofs = append(proofs, p)
		if r.Header.Get("Authorization") != "DPoP at-1" {
			t.Errorf("Authorization %q", r.Header.Get("Authorization"))
		}
		if p.Claims.Nonce != "rs-nonce" {
			w.Header().Set("DPoP-Nonce", "rs-nonce")
			w.Header().Set("WWW-Authenticate", `DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		io.WriteString(w, "ok")
	}))
	defer srv.Close()
	hc := NewClient(k).HTTPClient(oauth2.StaticTokenSource(&oauth2.Token{AccessToken: "at-1", TokenType: "DPoP"}))
	resp, err := hc.Get(srv.URL + "/items?page=2")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok" || len(proofs) != 2 {
		t.Fatalf("%d %q after %d requests", resp.StatusCode, body, len(proofs))
	}
	for _, p := range proofs {
		if p.Claims.ATH != AccessTokenHash("at-1") || p.Claims.HTM != "GET" || p.Claims.HTU != srv.URL+"/items" {
			t.Errorf("proof %+v", p.Claims)
		}
	}
}

func mustParse(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
