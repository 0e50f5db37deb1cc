package api

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/tokens"
)

// TestAccessTokenIsRFC9068 mints an access token and checks it the way a
// resource server would: typ at+jwt, a kid from the published JWKS, a valid
// EdDSA signature, and the profile's claims.
func TestAccessTokenIsRFC9068(t *testing.T) {
	now := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	ks := keys.NewKeyset(now)
	a, err := NewAccessTokens(ks, "https://tokend.example", 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var jwks jose.JSONWebKeySet
	if err := json.Unmarshal(a.JWKS(), &jwks); err != nil || len(jwks.Keys) != 1 || !jwks.Keys[0].IsPublic() {
		t.Fatalf("JWKS %s: %v", a.JWKS(), err)
	}
	fam := domain.Family{ID: "fam-1", Subject: "user-42", ClientID: "web-app"}
	for _, c := range []struct {
		audience []string
		wantAud  jwt.Audience
	}{
		{[]string{"https://api.example.com"}, jwt.Audience{"https://api.example.com"}},
		{nil, nil},
	} {
		raw, err := a.Mint(tokens.Grant{Family: fam, Scope: []string{"openid", "api:read"}, Audience: c.audience}, now)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.EdDSA})
		if err != nil {
			t.Fatal(err)
		}
		h := tok.Headers[0]
		if h.ExtraHeaders[jose.HeaderType] != "at+jwt" || h.KeyID != jwks.Keys[0].KeyID || h.Algorithm != string(jose.EdDSA) {
			t.Fatalf("header %+v", h)
		}
		var std jwt.Claims
		var extra struct {
			ClientID string `json:"client_id"`
			Scope    string `json:"scope"`
			SID      string `json:"sid"`
		}
		if err := tok.Claims(jwks.Keys[0].Key, &std, &extra); err != nil {
			t.Fatalf("signature: %v", err)
		}
		if err := std.ValidateWithLeeway(jwt.Expected{Issuer: "https://tokend.example", Subject: "user-42", Time: now.Add(time.Minute)}, 0); err != nil {
			t.Fatal(err)
		}
		if !std.Expiry.Time().Equal(now.Add(5*time.Minute)) || !std.IssuedAt.Time().Equal(now) || std.ID == "" {
			t.Fatalf("times or jti: %+v", std)
		}
		if len(std.Audience) != len(c.wantAud) || (len(c.wantAud) == 1 && std.Audience[0] != c.wantAud[0]) {
			t.Fatalf("aud %v, want %v", std.Audience, c.wantAud)
		}
		if extra.ClientID != "web-app" || extra.Scope != "openid api:read" || extra.SID != "fam-1" {
			t.Fatalf("claims %+v", extra)
		}
	}
	// A token altered after signing fails verification.
	raw, _ := a.Mint(tokens.Grant{Family: fam}, now)
	tampered := []byte(raw)
	tampered[len(tampered)-3] ^= 1
	if tok, err := jwt.ParseSigned(string(tampered), []jose.SignatureAlgorithm{jose.EdDSA}); err == nil {
		var std jwt.Claims
		if tok.Claims(jwks.Keys[0].Key, &std) == nil {
			t.Fatal("a tampered token verified")
		}
	}
}

// BenchmarkMintAccessToken measures minting one access token, which every
// issue and refresh reply carries: mostly the Ed25519 signature.
//
//	go test -run '^$' -bench MintAccessToken ./api
func BenchmarkMintAccessToken(b *testing.B) {
	now := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	a, err := NewAccessTokens(keys.NewKeyset(now), "https://tokend.example", 5*time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	g := tokens.Grant{Family: domain.Family{ID: "Yx3kq0vVdM1oI7qf2nE8Tw", Subject: "user-42", ClientID: "web-app"},
		Scope: []string{"openid", "api:read"}, Audience: []string{"https://api.example.com"}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Mint(g, now); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAccessTokenVerify: Verify accepts exactly the unexpired tokens this
// deployment signed, with the client's lifetime when it has one.
func TestAccessTokenVerify(t *testing.T) {
	now := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	a, err := NewAccessTokens(keys.NewKeyset(now), "https://tokend.example", 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	g := tokens.Grant{Family: domain.Family{ID: "fam-1", Subject: "user-42", ClientID: "web-app"}, Scope: []string{"api:read"}}
	tok, _ := a.Mint(g, now)
	c, err := a.Verify(tok, now.Add(time.Minute))
	if err != nil || c.SID != "fam-1" || c.ClientID != "web-app" || c.Scope != "api:read" || c.Subject != "user-42" {
		t.Fatalf("Verify = %+v, %v", c, err)
	}
	if _, err := a.Verify(tok, now.Add(5*time.Minute+time.Second)); err == nil {
		t.Fatal("an expired token verified")
	}
	g.AccessTTL = time.Minute
	short, _ := a.Mint(g, now)
	if _, err := a.Verify(short, now.Add(2*time.Minute)); err == nil || a.TTL(g) != time.Minute {
		t.Fatal("the client's access lifetime was not used")
	}
	other, _ := NewAccessTokens(keys.NewKeyset(now), "https://tokend.example", 5*time.Minute)
	foreign, _ := other.Mint(g, now)
	ks := keys.NewKeyset(now)
	sameKeys, _ := NewAccessTokens(ks, "https://tokend.example", 5*time.Minute)
	otherIssuer, _ := NewAccessTokens(ks, "https://evil.example", 5*time.Minute)
	wrongIss, _ := otherIssuer.Mint(g, now)
	if _, err := sameKeys.Verify(wrongIss, now); err == nil {
		t.Error("a token of another issuer verified")
	}
	for name, bad := range map[string]string{
		"another deployment's": foreign,
		"tampered":             tok[:len(tok)-4] + "AAAA",
		"not a JWT":            "rt1.fam.1.k.s.m",
	} {
		if _, err := a.Verify(bad, now); err == nil {
			t.Errorf("%s token verified", name)
		}
	}
}
