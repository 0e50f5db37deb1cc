package api

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
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
	var published jose.JSONWebKeySet
	if err := json.Unmarshal(a.JWKS(), &published); err != nil {
		t.Fatalf("JWKS %s: %v", a.JWKS(), err)
	}
	signing, _ := ks.CurrentSigning()
	jwks := jose.JSONWebKeySet{Keys: published.Key(signing.ID)}
	if len(jwks.Keys) != 1 || !jwks.Keys[0].IsPublic() || jwks.Keys[0].Algorithm != string(jose.EdDSA) {
		t.Fatalf("the signing key in the JWKS %s", a.JWKS())
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

// TestAccessTTLCappedAtTheDeployments: a client's access lifetime longer
// than --access-ttl (registered before the flag was lowered) is cut to it,
// in the token and in expires_in.
func TestAccessTTLCappedAtTheDeployments(t *testing.T) {
	now := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	a, err := NewAccessTokens(keys.NewKeyset(now), "https://tokend.example", 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	g := tokens.Grant{Family: domain.Family{ID: "fam-1", Subject: "user-42", ClientID: "web-app"}, AccessTTL: 2 * time.Hour}
	tok, _ := a.Mint(g, now)
	c, err := a.Verify(tok, now)
	if err != nil || !c.Expiry.Time().Equal(now.Add(5*time.Minute)) || a.TTL(g) != 5*time.Minute || a.MaxTTL() != 5*time.Minute {
		t.Fatalf("a 2h client lifetime under --access-ttl 5m: expiry %v, TTL %v: %v", c.Expiry.Time(), a.TTL(g), err)
	}
}

// TestAccessTokensOutliveNoRotation: a token of the longest lifetime a
// client may have verifies until it expires, however often the keys
// rotate meanwhile; the signing key leaves the JWKS only after that.
func TestAccessTokensOutliveNoRotation(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	const ttl = 10 * time.Minute
	// As tokend wires it: signing keys live --access-ttl after they retire.
	ring, err := keys.OpenKeyring(ctx, js, 1, keys.Lifetimes{Refresh: time.Hour, Access: ttl}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAccessTokens(ring.Loaded().Keys, "https://tokend.example", ttl)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Follow(ring); err != nil {
		t.Fatal(err)
	}
	// The client was registered with 3 h, before --access-ttl was lowered.
	g := tokens.Grant{Family: domain.Family{ID: "fam-1", Subject: "user-42", ClientID: "web-app"}, AccessTTL: 3 * time.Hour}
	minted := time.Now()
	tok, _ := a.Mint(g, minted)
	for range 2 {
		staged, err := ring.Stage(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ring.Promote(ctx, staged.Revision); err != nil {
			t.Fatal(err)
		}
	}
	c, err := a.Verify(tok, time.Now())
	if err != nil {
		t.Fatalf("after two rotations: %v", err)
	}
	// The keys in effect a moment before the token expires still hold its
	// key (keys.Keyset.InEffect is what the keyring switches to as keys
	// expire).
	lastMoment := c.Expiry.Time().Add(-time.Second)
	inEffect, _ := ring.Loaded().Keys.InEffect(lastMoment)
	if err := a.Use(inEffect); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Verify(tok, lastMoment); err != nil {
		t.Fatalf("a second before it expires, at %v: %v", lastMoment.Sub(minted), err)
	}
	if _, err := a.Verify(tok, c.Expiry.Time().Add(time.Second)); err == nil {
		t.Fatal("verified once expired")
	}
}

// TestJWKSHoldsSETKeys: the JWKS publishes the SET keys, next, current and
// retired, as RS256 keys, beside the signing keys, and no private part of
// either; a SET key leaves it at its expiry.
func TestJWKSHoldsSETKeys(t *testing.T) {
	now := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	life := keys.Lifetimes{Refresh: time.Hour, Access: time.Minute, SET: time.Hour, Skew: time.Minute}
	promoted, err := keys.NewKeyset(now).Stage(now, life).Promote(now, life)
	if err != nil {
		t.Fatal(err)
	}
	ks := promoted.Stage(now, life) // next, current and retired SET keys
	a, err := NewAccessTokens(ks, "https://tokend.example", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var jwks jose.JSONWebKeySet
	if err := json.Unmarshal(a.JWKS(), &jwks); err != nil {
		t.Fatal(err)
	}
	if len(jwks.Keys) != len(ks.Signing)+len(ks.SET) || len(ks.SET) != 3 {
		t.Fatalf("%d SET keys, JWKS %s", len(ks.SET), a.JWKS())
	}
	for _, k := range ks.SET {
		private, err := k.Private()
		if err != nil {
			t.Fatal(err)
		}
		got := jwks.Key(k.ID)
		if len(got) != 1 || got[0].Algorithm != string(jose.RS256) || got[0].Use != "sig" || !got[0].IsPublic() {
			t.Fatalf("SET key %s (%s) in the JWKS: %+v", k.ID, k.State, got)
		}
		if public, ok := got[0].Key.(*rsa.PublicKey); !ok || !public.Equal(&private.PublicKey) || public.N.BitLen() < 2048 {
			t.Fatalf("SET key %s: the JWKS holds %T", k.ID, got[0].Key)
		}
	}
	for _, private := range []string{`"d"`, `"p"`, `"q"`, `"dp"`, `"dq"`, `"qi"`} {
		if strings.Contains(string(a.JWKS()), private) {
			t.Fatalf("the JWKS holds private key material %s: %s", private, a.JWKS())
		}
	}
	retired := ks.SET[slices.IndexFunc(ks.SET, func(k keys.SETKey) bool { return k.State == keys.KeyRetired })]
	inEffect, _ := ks.InEffect(retired.ExpiresAt)
	if err := a.Use(inEffect); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(a.JWKS()), retired.ID) || len(inEffect.SET) != 2 {
		t.Fatalf("the SET key retired until %v is in the JWKS then: %s", retired.ExpiresAt, a.JWKS())
	}
}

// TestVerifyRefusesSETs: a JWT signed with a SET key is never an access
// token, even one with every claim of an access token: SETs and access
// tokens share the JWKS, not the keys Verify accepts.
func TestVerifyRefusesSETs(t *testing.T) {
	now := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	ks := keys.NewKeyset(now)
	a, err := NewAccessTokens(ks, "https://tokend.example", 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	setKey, err := ks.CurrentSET()
	if err != nil {
		t.Fatal(err)
	}
	private, err := setKey.Private()
	if err != nil {
		t.Fatal(err)
	}
	claims := AccessClaims{
		Claims: jwt.Claims{Issuer: "https://tokend.example", Subject: "user-42", ID: "j1",
			Expiry: jwt.NewNumericDate(now.Add(time.Minute)), IssuedAt: jwt.NewNumericDate(now)},
		ClientID: "web-app", SID: "fam-1",
	}
	for _, typ := range []string{"at+jwt", "secevent+jwt"} {
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: private},
			(&jose.SignerOptions{}).WithType(jose.ContentType(typ)).WithHeader(jose.HeaderKey("kid"), setKey.ID))
		if err != nil {
			t.Fatal(err)
		}
		token, err := jwt.Signed(signer).Claims(claims).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		// It is a valid JWT of this deployment's JWKS...
		var jwks jose.JSONWebKeySet
		json.Unmarshal(a.JWKS(), &jwks)
		parsed, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.RS256})
		if err != nil || parsed.Claims(jwks.Key(setKey.ID)[0].Key, &jwt.Claims{}) != nil {
			t.Fatalf("%s: not signed with the SET key: %v", typ, err)
		}
		// ... but not an access token.
		if _, err := a.Verify(token, now); err == nil {
			t.Fatalf("an RS256 %s signed with the SET key verified as an access token", typ)
		}
	}
}

// TestJWKSCacheControl: resource servers may cache the JWKS for 5 minutes,
// or only until its first key expires.
func TestJWKSCacheControl(t *testing.T) {
	now := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	life := keys.Lifetimes{Refresh: time.Hour, Access: time.Minute, Skew: time.Minute}
	ks := keys.NewKeyset(now)
	a, err := NewAccessTokens(ks, "https://tokend.example", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.JWKSCacheControl(now); got != "public, max-age=300" {
		t.Fatalf("without a retired key: %s", got)
	}
	promoted, err := ks.Stage(now, life).Promote(now, life) // the old signing key expires at now+2m
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Use(promoted); err != nil {
		t.Fatal(err)
	}
	for at, want := range map[time.Duration]string{
		0:                 "public, max-age=120",
		90 * time.Second:  "public, max-age=30",
		2 * time.Minute:   "public, max-age=0",
		10 * time.Minute:  "public, max-age=0",
		-10 * time.Minute: "public, max-age=300",
	} {
		if got := a.JWKSCacheControl(now.Add(at)); got != want {
			t.Errorf("at +%v: %s, want %s", at, got, want)
		}
	}
	// Once the signing key expired, the retired SET key bounds it: it
	// expires at now+4m (Lifetimes.SET 3m, skew 1m).
	life.SET = 3 * time.Minute
	promoted, err = ks.Stage(now, life).Promote(now, life)
	if err != nil {
		t.Fatal(err)
	}
	later := now.Add(2 * time.Minute)
	inEffect, _ := promoted.InEffect(later)
	if err := a.Use(inEffect); err != nil {
		t.Fatal(err)
	}
	if got := a.JWKSCacheControl(later); len(inEffect.Signing) != 1 || got != "public, max-age=120" {
		t.Errorf("with a SET key expiring in 2 minutes: %s (%d signing keys)", got, len(inEffect.Signing))
	}
}

// TestClientsAdminAccessTTLWithinDeployment: a client may not be given
// access tokens longer-lived than the deployment's, whose signing keys
// stay published only that long after they retire.
func TestClientsAdminAccessTTLWithinDeployment(t *testing.T) {
	url := eventstest.MustJetStream(t).ClientURL()
	startClientsAdmin(t, url)
	nc := eventstest.MustConnect(t, url)
	put := func(body string, out any) (string, string) {
		t.Helper()
		return clientsCall(t, nc, SubjectClientsPut, nil, body, out)
	}
	raw, code := put(`{"client_id":"spa","type":"public","scopes":[],"audiences":[],"by":"alice","access_ttl":"5m1s"}`, nil)
	wantClientsError(t, raw, domain.EInvalidRequest, code, "access_ttl 5m1s is longer than this deployment's --access-ttl 5m0s")
	var created ClientChangeView
	if raw, code = put(`{"client_id":"spa","type":"public","scopes":[],"audiences":[],"by":"alice","access_ttl":"5m"}`, &created); code != "" {
		t.Fatalf("access_ttl equal to --access-ttl: %s", raw)
	}
	raw, code = put(fmt.Sprintf(`{"client_id":"spa","type":"public","scopes":[],"audiences":[],"by":"alice","access_ttl":"2h","revision":%d}`, created.Revision), nil)
	wantClientsError(t, raw, domain.EInvalidRequest, code, "--access-ttl")
}
