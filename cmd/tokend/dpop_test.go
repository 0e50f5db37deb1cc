package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/registry"
)

// prover makes DPoP proofs (RFC 9449 section 4.2) with one key.
type prover struct {
	key *ecdsa.PrivateKey
	jkt string
}

func newProver(t testing.TB) *prover {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tp, err := (&jose.JSONWebKey{Key: key.Public()}).Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return &prover{key: key, jkt: base64.RawURLEncoding.EncodeToString(tp)}
}

// proofClaims are a proof's claims; zero members are left out.
type proofClaims struct {
	JTI   string `json:"jti,omitempty"`
	HTM   string `json:"htm,omitempty"`
	HTU   string `json:"htu,omitempty"`
	IAT   int64  `json:"iat,omitempty"`
	Nonce string `json:"nonce,omitempty"`
	ATH   string `json:"ath,omitempty"`
}

// proof signs a proof for method and url now, changed by mods.
func (p *prover) proof(t testing.TB, method, url string, mods ...func(*proofClaims, *jose.SignerOptions)) string {
	t.Helper()
	c := proofClaims{JTI: nuid.Next(), HTM: method, HTU: url, IAT: time.Now().Unix()}
	opts := (&jose.SignerOptions{EmbedJWK: true}).WithType("dpop+jwt")
	for _, m := range mods {
		m(&c, opts)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: p.key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jwt.Signed(signer).Claims(c).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func withNonce(n string) func(*proofClaims, *jose.SignerOptions) {
	return func(c *proofClaims, _ *jose.SignerOptions) { c.Nonce = n }
}

// dpopEnv is a tokend with its OAuth listener, a public client "spa" and a
// client "bound" registered with dpop_bound_access_tokens.
type dpopEnv struct {
	*oauthEnv
}

func mustDPoPEnv(t *testing.T, configure func(*Config)) dpopEnv {
	t.Helper()
	e := dpopEnv{mustOAuthEnv(t, configure)}
	for _, c := range []domain.Client{
		{ID: "bound", Type: domain.ClientPublic, DPoPBound: true},
		{ID: "nonce", Type: domain.ClientPublic, DPoPRequireNonce: true},
	} {
		c.Scopes, c.Audiences = []string{"openid", "api:read", "api:write"}, []string{"https://api.example.com", "https://billing.example.com"}
		if _, err := e.app.Clients().Put(t.Context(), c, "", 0, registry.Actor{By: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// sibling starts another instance on e's NATS server serving the same
// public URL, as behind a load balancer, and returns it with an env that
// sends to its own OAuth listener.
func (e dpopEnv) sibling(t *testing.T) (*App, Config, dpopEnv) {
	t.Helper()
	cfg := oauthConfig(t, e.app.NATSURL())
	cfg.Issuer = e.base
	app := MustApp(t, cfg, nil)
	return app, cfg, dpopEnv{&oauthEnv{app: app, nc: e.nc, base: "http://" + app.oauthLn.Addr().String()}}
}

// issueBound issues a family of client bound to jkt over NATS.
func issueBound(t testing.TB, nc *nats.Conn, client, jkt string) wire.TokenReply {
	t.Helper()
	r := call(t, nc, "tokens.cmd.issue", wire.IssueRequest{Subject: "user-42", ClientID: client, Scope: "openid api:read",
		Audience: []string{"https://api.example.com"}, DPoPJKT: jkt})
	if r.errCode != "" {
		t.Fatalf("issue: %s", r.raw)
	}
	return r.token
}

// refreshHTTP refreshes token as the public client over HTTP with the
// proof, if any, in the DPoP header.
func (e dpopEnv) refreshHTTP(t *testing.T, client, token, proof string) (int, http.Header, map[string]any) {
	t.Helper()
	var extra http.Header
	if proof != "" {
		extra = http.Header{"Dpop": {proof}}
	}
	code, header, raw := e.send(t, "/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {token}, "client_id": {client}}, "", "", extra)
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("%d %q", code, raw)
	}
	return code, header, body
}

// accessClaims decodes an access token's claims without verifying it
// (other tests verify the signature).
func accessTokenClaims(t *testing.T, token string) map[string]any {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
		t.Fatal(err)
	}
	return c
}

func cnfJKT(c map[string]any) string {
	cnf, _ := c["cnf"].(map[string]any)
	jkt, _ := cnf["jkt"].(string)
	return jkt
}

// TestDPoPBoundFamilyOverHTTP: a family bound at issue refreshes over HTTP
// with proofs by its key, gets DPoP access tokens bound to it, and
// introspection shows the binding.
func TestDPoPBoundFamilyOverHTTP(t *testing.T) {
	e := mustDPoPEnv(t, nil)
	p := newProver(t)
	issued := issueBound(t, e.nc, "spa", p.jkt)
	if issued.TokenType != "DPoP" || cnfJKT(accessTokenClaims(t, issued.AccessToken)) != p.jkt {
		t.Fatalf("issue of a bound family: token_type %q, claims %v", issued.TokenType, accessTokenClaims(t, issued.AccessToken))
	}
	token := issued.RefreshToken
	for range 2 {
		code, _, body := e.refreshHTTP(t, "spa", token, p.proof(t, "POST", e.base+"/oauth2/token"))
		if code != 200 || body["token_type"] != "DPoP" {
			t.Fatalf("refresh: %d %v", code, body)
		}
		if got := cnfJKT(accessTokenClaims(t, body["access_token"].(string))); got != p.jkt {
			t.Fatalf("access token cnf.jkt %q, want %q", got, p.jkt)
		}
		token = body["refresh_token"].(string)
	}
	r := call(t, e.nc, "tokens.query.introspect", map[string]any{"refresh_token": token, "min_seq": lastEventSeq(t, e.app.js)})
	var in wire.Introspection
	json.Unmarshal(r.raw, &in)
	if !in.Active || in.Cnf == nil || in.Cnf.JKT != p.jkt {
		t.Fatalf("introspection of a bound family's token: %s", r.raw)
	}
	evs := familyEvents(t, e.nc, issued.FamilyID)
	for _, ev := range evs {
		if ev.DPoPJKT != p.jkt {
			t.Fatalf("event %s does not carry the binding: %+v", ev.Type, ev)
		}
	}
}

// TestDPoPStolenTokenWithAnotherKey: a bound family's refresh token
// presented with a proof by another key is theft: token.key_mismatch and
// family.revoked are recorded, and the owner's key no longer works either.
func TestDPoPStolenTokenWithAnotherKey(t *testing.T) {
	e := mustDPoPEnv(t, nil)
	owner, thief := newProver(t), newProver(t)
	issued := issueBound(t, e.nc, "spa", owner.jkt)
	code, _, body := e.refreshHTTP(t, "spa", issued.RefreshToken, thief.proof(t, "POST", e.base+"/oauth2/token"))
	if code != 400 || body["error"] != "invalid_grant" {
		t.Fatalf("refresh with the thief's key: %d %v", code, body)
	}
	evs := familyEvents(t, e.nc, issued.FamilyID)
	if got := countTypes(evs); got["token.key_mismatch"] != 1 || got["family.revoked"] != 1 {
		t.Fatalf("events %v", got)
	}
	for _, ev := range evs {
		switch ev.Type {
		case "token.key_mismatch":
			if ev.DPoPJKT != owner.jkt || ev.PresentedJKT != thief.jkt {
				t.Fatalf("key_mismatch names keys %q (family) and %q (presented)", ev.DPoPJKT, ev.PresentedJKT)
			}
		case "family.revoked":
			if ev.Reason != domain.ReasonDPoPKeyMismatch {
				t.Fatalf("revoked for %q", ev.Reason)
			}
		}
	}
	code, _, body = e.refreshHTTP(t, "spa", issued.RefreshToken, owner.proof(t, "POST", e.base+"/oauth2/token"))
	if code != 400 || body["error"] != "invalid_grant" {
		t.Fatalf("the owner's refresh after the theft: %d %v", code, body)
	}
	if n := scrapeValue(t, e.app, "tokend_dpop_proofs_refused_total", "reason", "key_mismatch"); n != 1 {
		t.Fatalf("key_mismatch refusals counted %v", n)
	}
}

// TestDPoPRefusals: a bound family without a proof, and proofs failing a
// check, are refused with invalid_dpop_proof; nothing but the missing
// proof is recorded, and the token keeps working.
func TestDPoPRefusals(t *testing.T) {
	e := mustDPoPEnv(t, nil)
	p := newProver(t)
	issued := issueBound(t, e.nc, "spa", p.jkt)
	endpoint := e.base + "/oauth2/token"
	for _, tc := range []struct {
		name, proof, reason string
	}{
		{"no proof", "", "missing"},
		{"not a JWT", "not-a-jwt", "malformed"},
		{"typ jwt", p.proof(t, "POST", endpoint, func(_ *proofClaims, o *jose.SignerOptions) { o.WithType("JWT") }), "typ"},
		{"GET", p.proof(t, "GET", endpoint), "htm"},
		{"another endpoint", p.proof(t, "POST", e.base+"/oauth2/revoke"), "htu"},
		{"an hour old", p.proof(t, "POST", endpoint, func(c *proofClaims, _ *jose.SignerOptions) { c.IAT -= 3600 }), "iat"},
		{"with ath", p.proof(t, "POST", endpoint, func(c *proofClaims, _ *jose.SignerOptions) { c.ATH = "abc" }), "ath"},
		{"no jti", p.proof(t, "POST", endpoint, func(c *proofClaims, _ *jose.SignerOptions) { c.JTI = "" }), "jti"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := scrapeValue(t, e.app, "tokend_dpop_proofs_refused_total", "reason", tc.reason)
			code, _, body := e.refreshHTTP(t, "spa", issued.RefreshToken, tc.proof)
			if code != 400 || body["error"] != "invalid_dpop_proof" {
				t.Fatalf("%d %v", code, body)
			}
			if n := scrapeValue(t, e.app, "tokend_dpop_proofs_refused_total", "reason", tc.reason); n != before+1 {
				t.Fatalf("refusals for %s counted %v, want %v", tc.reason, n, before+1)
			}
		})
	}
	evs := familyEvents(t, e.nc, issued.FamilyID)
	if got := countTypes(evs); got["refresh.rejected"] != 1 || len(evs) != 2 {
		t.Fatalf("events %v: want token.issued and one refresh.rejected (the missing proof)", got)
	}
	if evs[1].Reason != domain.ReasonDPoPProofMissing {
		t.Fatalf("refusal recorded as %q", evs[1].Reason)
	}
	if code, _, body := e.refreshHTTP(t, "spa", issued.RefreshToken, p.proof(t, "POST", endpoint)); code != 200 {
		t.Fatalf("the token after the refusals: %d %v", code, body)
	}
}

// TestDPoPBoundClient: a client registered with dpop_bound_access_tokens
// cannot issue a bearer family, and a bearer family of it cannot refresh
// without a proof.
func TestDPoPBoundClient(t *testing.T) {
	e := mustDPoPEnv(t, nil)
	r := call(t, e.nc, "tokens.cmd.issue", wire.IssueRequest{Subject: "user-42", ClientID: "bound", Scope: "openid"})
	wantError(t, r, domain.EInvalidRequest)
	p := newProver(t)
	issued := issueBound(t, e.nc, "bound", p.jkt)
	r = call(t, e.nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: issued.RefreshToken, ClientID: "bound"})
	wantError(t, r, domain.EInvalidDPoPProof)
	// Over NATS a proof names the token endpoint unless told otherwise.
	r = call(t, e.nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: issued.RefreshToken, ClientID: "bound",
		DPoPProof: p.proof(t, "POST", e.base+"/oauth2/token")})
	if r.errCode != "" || r.token.TokenType != "DPoP" {
		t.Fatalf("refresh over NATS with a proof: %s", r.raw)
	}
	// A gateway forwards the proof with the request it came with.
	gateway := "https://gw.example.com/api/refresh"
	r = call(t, e.nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: r.token.RefreshToken, ClientID: "bound",
		DPoPProof: p.proof(t, "PUT", gateway), DPoPMethod: "PUT", DPoPURL: gateway})
	if r.errCode != "" {
		t.Fatalf("refresh forwarded by a gateway: %s", r.raw)
	}
	// A bearer family of a plain client refreshed with a proof gets a
	// bound access token; its refresh token stays bearer.
	bearer := mustIssue(t, e.nc, "user-7", "spa")
	code, _, body := e.refreshHTTP(t, "spa", bearer.RefreshToken, p.proof(t, "POST", e.base+"/oauth2/token"))
	if code != 200 || body["token_type"] != "DPoP" || cnfJKT(accessTokenClaims(t, body["access_token"].(string))) != p.jkt {
		t.Fatalf("bearer family with a proof: %d %v", code, body)
	}
	if code, _, body = e.refreshHTTP(t, "spa", body["refresh_token"].(string), ""); code != 200 || body["token_type"] != "Bearer" {
		t.Fatalf("bearer family without a proof: %d %v", code, body)
	}
}

// TestDPoPNonceRoundTrip: a client that must use nonces gets
// use_dpop_nonce with a DPoP-Nonce, succeeds with it on another
// instance, and gets the next nonce with every reply.
func TestDPoPNonceRoundTrip(t *testing.T) {
	e := mustDPoPEnv(t, nil)
	_, _, otherEnv := e.sibling(t)
	p := newProver(t)
	issued := issueBound(t, e.nc, "nonce", p.jkt)
	endpoint := e.base + "/oauth2/token"
	code, header, body := e.refreshHTTP(t, "nonce", issued.RefreshToken, p.proof(t, "POST", endpoint))
	nonce := header.Get("DPoP-Nonce")
	if code != 400 || body["error"] != "use_dpop_nonce" || nonce == "" ||
		!strings.Contains(header.Get("WWW-Authenticate"), `error="use_dpop_nonce"`) {
		t.Fatalf("a proof without a nonce: %d %v %v", code, header, body)
	}
	if code, _, body = e.refreshHTTP(t, "nonce", issued.RefreshToken, p.proof(t, "POST", endpoint, withNonce("bm90LWEtbm9uY2U"))); code != 400 || body["error"] != "use_dpop_nonce" {
		t.Fatalf("a made-up nonce: %d %v", code, body)
	}
	r := call(t, e.nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: issued.RefreshToken, ClientID: "nonce",
		DPoPProof: p.proof(t, "POST", endpoint)})
	wantError(t, r, domain.EUseDPoPNonce)
	if r.err.DPoPNonce == "" {
		t.Fatalf("use_dpop_nonce over NATS without dpop_nonce: %s", r.raw)
	}
	// The other instance accepts the nonce this one made.
	code, header, body = otherEnv.refreshHTTP(t, "nonce", issued.RefreshToken, p.proof(t, "POST", endpoint, withNonce(nonce)))
	if code != 200 || header.Get("DPoP-Nonce") == "" {
		t.Fatalf("with the nonce: %d %v %v", code, header, body)
	}
	if evs := familyEvents(t, e.nc, issued.FamilyID); len(evs) != 2 {
		t.Fatalf("the nonce round trip recorded %v", countTypes(evs))
	}
}

// TestDPoPProofReplay: a proof is used once, whichever instance sees it
// again and after a restart.
func TestDPoPProofReplay(t *testing.T) {
	e := mustDPoPEnv(t, nil)
	other, otherCfg, otherEnv := e.sibling(t)
	p := newProver(t)
	endpoint := e.base + "/oauth2/token"
	issued := issueBound(t, e.nc, "spa", p.jkt)
	proof := p.proof(t, "POST", endpoint)
	if code, _, body := e.refreshHTTP(t, "spa", issued.RefreshToken, proof); code != 200 {
		t.Fatalf("first use: %d %v", code, body)
	}
	// The same proof with the same (now rotated) token, at the other
	// instance inside the reuse interval, would get the child again:
	// the proof's one use stops it.
	code, _, body := otherEnv.refreshHTTP(t, "spa", issued.RefreshToken, proof)
	if code != 400 || body["error"] != "invalid_dpop_proof" || !strings.Contains(body["error_description"].(string), "used") {
		t.Fatalf("the proof again at another instance: %d %v", code, body)
	}
	other.Stop()
	restarted := MustApp(t, otherCfg, nil)
	restartedEnv := dpopEnv{&oauthEnv{app: restarted, nc: e.nc, base: "http://" + restarted.oauthLn.Addr().String()}}
	if code, _, body := restartedEnv.refreshHTTP(t, "spa", issued.RefreshToken, proof); code != 400 || body["error"] != "invalid_dpop_proof" {
		t.Fatalf("the proof again after a restart: %d %v", code, body)
	}
}

// TestDPoPBehindAPathPrefixProxy: behind a proxy that serves tokend under
// a path, proofs name the public URL, which --issuer gives; a proof
// naming the internal address is refused.
func TestDPoPBehindAPathPrefixProxy(t *testing.T) {
	public := "https://auth.example.com/tenant-a"
	e := mustDPoPEnv(t, func(c *Config) { c.Issuer = public })
	p := newProver(t)
	issued := issueBound(t, e.nc, "spa", p.jkt)
	internal := "http://" + e.app.oauthLn.Addr().String()
	e.base = internal // the proxy forwards here, stripping the prefix
	code, _, body := e.refreshHTTP(t, "spa", issued.RefreshToken, p.proof(t, "POST", internal+"/oauth2/token"))
	if code != 400 || body["error"] != "invalid_dpop_proof" {
		t.Fatalf("a proof naming the internal URL: %d %v", code, body)
	}
	// The client writes the URL as it likes; normalisation makes it one.
	code, _, body = e.refreshHTTP(t, "spa", issued.RefreshToken, p.proof(t, "POST", "HTTPS://Auth.Example.com:443/tenant-a/oauth2/token"))
	if code != 200 {
		t.Fatalf("a proof naming the public URL: %d %v", code, body)
	}
}

// TestDPoPMetadata: the OAuth metadata lists the proofs' algorithms.
func TestDPoPMetadata(t *testing.T) {
	e := mustDPoPEnv(t, func(c *Config) { c.DPoPSigningAlgs = "ES256,EdDSA" })
	resp, err := http.Get(e.base + "/.well-known/oauth-authorization-server")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	algs, _ := json.Marshal(m["dpop_signing_alg_values_supported"])
	if string(algs) != `["ES256","EdDSA"]` {
		t.Fatalf("dpop_signing_alg_values_supported %s", algs)
	}
}

// TestDPoPClientSource: the Go client's Source, holding a DPoP key, keeps
// a bound family of a client that must use nonces going (the nonce round
// trip included); a Source with another key holding the same refresh token
// ends the family.
func TestDPoPClientSource(t *testing.T) {
	e := mustDPoPEnv(t, nil)
	key, err := client.NewDPoP(nil)
	if err != nil {
		t.Fatal(err)
	}
	issued := issueBound(t, e.nc, "nonce", key.JKT())
	store := client.NewMemoryStore()
	c := client.New(e.nc, "tokens")
	var ahead atomic.Int64 // the Source's clock runs ahead, so its access tokens expire
	now := func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	src := client.NewSource(c, store, "s1", client.Options{DPoP: key, DPoPURL: e.base + "/oauth2/token", Now: now})
	defer src.Close()
	if err := src.Begin(t.Context(), "nonce", issued); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		ahead.Add(int64(time.Hour))
		at, err := src.Token(t.Context(), "")
		if err != nil {
			t.Fatalf("Token: %v", err)
		}
		if at.TokenType != "DPoP" || cnfJKT(accessTokenClaims(t, at.Token)) != key.JKT() {
			t.Fatalf("Token: type %q, claims %v", at.TokenType, accessTokenClaims(t, at.Token))
		}
	}
	if got := countTypes(familyEvents(t, e.nc, issued.FamilyID)); got["token.rotated"] != 2 || len(got) != 2 {
		t.Fatalf("events %v, want token.issued and two token.rotated", got)
	}
	thiefKey, _ := client.NewDPoP(nil)
	thief := client.NewSource(c, store, "s1", client.Options{DPoP: thiefKey, DPoPURL: e.base + "/oauth2/token",
		Now: func() time.Time { return now().Add(time.Hour) }})
	defer thief.Close()
	if _, err := thief.Token(t.Context(), ""); !client.Terminal(err) {
		t.Fatalf("the stolen token with another key: %v, want a terminal error", err)
	}
	if got := countTypes(familyEvents(t, e.nc, issued.FamilyID)); got["token.key_mismatch"] != 1 || got["family.revoked"] != 1 {
		t.Fatalf("events %v", got)
	}
}

// TestDPoPConcurrentRefreshesAndRetries: parallel refreshes of a bound
// family's token, each with its own proof by the family's key, through two
// instances, rotate once and all get the same child (invariant 2); the
// just-rotated parent with another key is theft, not a retry.
func TestDPoPConcurrentRefreshesAndRetries(t *testing.T) {
	e := mustDPoPEnv(t, nil)
	other, _, _ := e.sibling(t)
	p, thief := newProver(t), newProver(t)
	issued := issueBound(t, e.nc, "spa", p.jkt)
	conns := []*nats.Conn{e.nc, eventstest.MustConnect(t, other.NATSURL())}
	const callers = 12
	children := make([]string, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := call(t, conns[i%2], "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: issued.RefreshToken, ClientID: "spa",
				DPoPProof: p.proof(t, "POST", e.base+"/oauth2/token")})
			if r.errCode != "" {
				t.Errorf("caller %d: %s", i, r.raw)
				return
			}
			children[i] = r.token.RefreshToken
		}()
	}
	wg.Wait()
	for i := range children {
		if children[i] != children[0] {
			t.Fatalf("caller %d got another child", i)
		}
	}
	if got := countTypes(familyEvents(t, e.nc, issued.FamilyID)); got["token.rotated"] != 1 || got["token.reused"] != callers-1 {
		t.Fatalf("events %v, want one token.rotated and %d token.reused", got, callers-1)
	}
	r := call(t, e.nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: issued.RefreshToken, ClientID: "spa",
		DPoPProof: thief.proof(t, "POST", e.base+"/oauth2/token")})
	wantError(t, r, domain.EInvalidGrant)
	if got := countTypes(familyEvents(t, e.nc, issued.FamilyID)); got["token.key_mismatch"] != 1 || got["family.revoked"] != 1 {
		t.Fatalf("the parent with another key inside the reuse interval: events %v", got)
	}
}

// TestDPoPAccessTokenIntrospection: introspecting a bound access token
// over HTTP answers token_type DPoP and its cnf (RFC 9449 section 6.2).
func TestDPoPAccessTokenIntrospection(t *testing.T) {
	e := mustDPoPEnv(t, nil)
	p := newProver(t)
	r := call(t, e.nc, "tokens.cmd.issue", wire.IssueRequest{Subject: "user-42", ClientID: "web", Scope: "openid",
		Audience: []string{"https://api.example.com"}, DPoPJKT: p.jkt})
	if r.errCode != "" {
		t.Fatalf("issue: %s", r.raw)
	}
	code, _, body := e.post(t, "/oauth2/introspect", url.Values{"token": {r.token.AccessToken}}, "web", e.secret)
	cnf, _ := body["cnf"].(map[string]any)
	if code != 200 || body["active"] != true || body["token_type"] != "DPoP" || cnf["jkt"] != p.jkt {
		t.Fatalf("introspection of a bound access token: %d %v", code, body)
	}
	bearer := mustIssue(t, e.nc, "user-42", "web")
	if _, _, body = e.post(t, "/oauth2/introspect", url.Values{"token": {bearer.AccessToken}}, "web", e.secret); body["token_type"] != "Bearer" || body["cnf"] != nil {
		t.Fatalf("introspection of a bearer access token: %v", body)
	}
}
