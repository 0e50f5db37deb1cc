package client_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
)

const tokenEndpoint = "https://tokend.example/oauth2/token"

// proof is a DPoP proof as a server sees it after verifying it against the
// key in its own header.
type proof struct {
	alg    string
	typ    string
	jwk    jose.JSONWebKey
	claims struct {
		JTI   string `json:"jti"`
		HTM   string `json:"htm"`
		HTU   string `json:"htu"`
		IAT   int64  `json:"iat"`
		ATH   string `json:"ath"`
		Nonce string `json:"nonce"`
	}
}

// verifyProof checks raw's signature with the jwk of its header, the way
// RFC 9449 section 4.3 says a server does, and returns what it carries.
func verifyProof(t *testing.T, raw string) proof {
	t.Helper()
	jws, err := jose.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.ES512, jose.EdDSA, jose.PS256})
	if err != nil {
		t.Fatalf("parse proof: %v", err)
	}
	h := jws.Signatures[0].Protected
	if h.JSONWebKey == nil || !h.JSONWebKey.IsPublic() || !h.JSONWebKey.Valid() {
		t.Fatalf("the proof's jwk is not a valid public key: %+v", h.JSONWebKey)
	}
	payload, err := jws.Verify(h.JSONWebKey)
	if err != nil {
		t.Fatalf("the proof does not verify with its own jwk: %v", err)
	}
	p := proof{alg: h.Algorithm, jwk: *h.JSONWebKey}
	p.typ, _ = h.ExtraHeaders[jose.HeaderType].(string)
	if err := json.Unmarshal(payload, &p.claims); err != nil {
		t.Fatal(err)
	}
	return p
}

func thumbprint(t *testing.T, k jose.JSONWebKey) string {
	t.Helper()
	sum, err := k.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(sum)
}

func ath(token string) string {
	sum := sha256.Sum256([]byte(token))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// mustKey returns a generated key; key generation does not fail.
func mustKey[K crypto.Signer](k K, err error) crypto.Signer {
	if err != nil {
		panic(err)
	}
	return k
}

// TestDPoPProofs: proofs by every kind of key verify with the jwk they
// embed, whose thumbprint is JKT, and carry typ, alg, htm, htu (without
// query and fragment), a recent iat, a jti never repeated, ath for an
// access token only, and the nonce given.
func TestDPoPProofs(t *testing.T) {
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		key  crypto.Signer
		alg  jose.SignatureAlgorithm
	}{
		{"generated", nil, jose.ES256},
		{"P-384", mustKey(ecdsa.GenerateKey(elliptic.P384(), rand.Reader)), jose.ES384},
		{"P-521", mustKey(ecdsa.GenerateKey(elliptic.P521(), rand.Reader)), jose.ES512},
		{"Ed25519", edKey, jose.EdDSA},
		{"RSA", mustKey(rsa.GenerateKey(rand.Reader, 2048)), jose.PS256},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, err := client.NewDPoP(c.key)
			if err != nil {
				t.Fatal(err)
			}
			jtis := map[string]bool{}
			before := time.Now().Unix()
			for _, accessToken := range []string{"", "at-1"} {
				raw, err := d.Proof(http.MethodPost, tokenEndpoint+"?x=1#frag", accessToken)
				if err != nil {
					t.Fatal(err)
				}
				p := verifyProof(t, raw)
				if p.typ != "dpop+jwt" || p.alg != string(c.alg) {
					t.Errorf("typ %q alg %q, want dpop+jwt %s", p.typ, p.alg, c.alg)
				}
				if got := thumbprint(t, p.jwk); got != d.JKT() || got == "" {
					t.Errorf("the jwk's thumbprint %q is not JKT %q", got, d.JKT())
				}
				if p.claims.HTM != http.MethodPost || p.claims.HTU != tokenEndpoint {
					t.Errorf("htm %q htu %q", p.claims.HTM, p.claims.HTU)
				}
				if p.claims.IAT < before || p.claims.IAT > time.Now().Unix() {
					t.Errorf("iat %d is not now", p.claims.IAT)
				}
				if jti, _ := base64.RawURLEncoding.DecodeString(p.claims.JTI); len(jti) < 16 || jtis[p.claims.JTI] {
					t.Errorf("jti %q: short or repeated", p.claims.JTI)
				}
				jtis[p.claims.JTI] = true
				want := ""
				if accessToken != "" {
					want = ath(accessToken)
				}
				if p.claims.ATH != want || p.claims.Nonce != "" {
					t.Errorf("ath %q nonce %q, want ath %q and no nonce", p.claims.ATH, p.claims.Nonce, want)
				}
			}
			d.SetNonce("n-1")
			raw, err := d.Proof(http.MethodGet, "https://api.example/me", "")
			if err != nil {
				t.Fatal(err)
			}
			if p := verifyProof(t, raw); p.claims.Nonce != "n-1" || p.claims.HTM != http.MethodGet || jtis[p.claims.JTI] {
				t.Errorf("after SetNonce: %+v", p.claims)
			}
		})
	}
}

func TestNewDPoPRefusesWeakKeys(t *testing.T) {
	for name, key := range map[string]crypto.Signer{
		"RSA 1024": mustKey(rsa.GenerateKey(rand.Reader, 1024)),
		"P-224":    mustKey(ecdsa.GenerateKey(elliptic.P224(), rand.Reader)),
	} {
		if _, err := client.NewDPoP(key); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

// TestDPoPAuthorize: a DPoP-bound access token goes out with the DPoP
// scheme and a proof for the request, hashing the token; a bearer token
// as before, with no proof.
func TestDPoPAuthorize(t *testing.T) {
	d, err := client.NewDPoP(nil)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodDelete, "https://api.example/items/7?force=1", nil)
	if err := d.Authorize(req, client.AccessToken{Token: "at-dpop", TokenType: "DPoP"}); err != nil {
		t.Fatal(err)
	}
	if got := req.Header.Get("Authorization"); got != "DPoP at-dpop" {
		t.Fatalf("Authorization %q", got)
	}
	p := verifyProof(t, req.Header.Get("DPoP"))
	if p.claims.HTM != http.MethodDelete || p.claims.HTU != "https://api.example/items/7" || p.claims.ATH != ath("at-dpop") {
		t.Fatalf("proof claims %+v", p.claims)
	}

	if err := d.Authorize(req, client.AccessToken{Token: "at-bearer", TokenType: "Bearer"}); err != nil {
		t.Fatal(err)
	}
	if req.Header.Get("Authorization") != "Bearer at-bearer" || req.Header.Get("DPoP") != "" {
		t.Fatalf("a bearer token: %v", req.Header)
	}
}

// fakeTokend answers tokens.cmd.refresh through nats micro with what
// answer returns for the n-th request (from 0), and records the requests;
// it answers every tokens.cmd.revoke with success, counting them.
type fakeTokend struct {
	mu      sync.Mutex
	seen    []wire.RefreshRequest
	revokes int
}

func startFakeTokend(t *testing.T, answer func(n int, req wire.RefreshRequest) (status string, body any)) (*fakeTokend, *client.Client) {
	t.Helper()
	nc := connect(t)
	svc, err := micro.AddService(nc, micro.Config{Name: "tokens", Version: "0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
	f := &fakeTokend{}
	err = svc.AddEndpoint("refresh", micro.HandlerFunc(func(r micro.Request) {
		var req wire.RefreshRequest
		_ = json.Unmarshal(r.Data(), &req)
		f.mu.Lock()
		n := len(f.seen)
		f.seen = append(f.seen, req)
		f.mu.Unlock()
		status, body := answer(n, req)
		data, _ := json.Marshal(body)
		if status != "" {
			_ = r.Error(status, "refused", data)
			return
		}
		_ = r.Respond(data)
	}), micro.WithEndpointSubject("tokens.cmd.refresh"))
	if err != nil {
		t.Fatal(err)
	}
	err = svc.AddEndpoint("revoke", micro.HandlerFunc(func(r micro.Request) {
		f.mu.Lock()
		f.revokes++
		f.mu.Unlock()
		_ = r.RespondJSON(wire.RevokeReply{RevokedFamilies: 1})
	}), micro.WithEndpointSubject("tokens.cmd.revoke"))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return f, client.New(nc, "")
}

func (f *fakeTokend) requests() []wire.RefreshRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]wire.RefreshRequest(nil), f.seen...)
}

func granted(n int, nonce string) wire.TokenReply {
	return wire.TokenReply{RefreshToken: fmt.Sprintf("rt-%d", n+2), FamilyID: "fam", TokenType: "DPoP",
		AccessToken: fmt.Sprintf("at-%d", n+2), ExpiresIn: 300, Scope: "read", DPoPNonce: nonce}
}

// dpopSource is a Source with a DPoP key on c, begun with rt-1, whose
// cached token has expired.
func dpopSource(t *testing.T, c *client.Client, opts client.Options) (*client.Source, client.Store, *clock) {
	t.Helper()
	store := client.NewMemoryStore()
	clk := newClock()
	opts.Now = clk.Now
	src := client.NewSource(c, store, "s1", opts)
	t.Cleanup(src.Close)
	issued := wire.TokenReply{RefreshToken: "rt-1", FamilyID: "fam", TokenType: "DPoP", AccessToken: "at-1",
		ExpiresIn: 300, Scope: "read"}
	if err := src.Begin(ctx(t), "web", issued); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Hour)
	return src, store, clk
}

func newDPoP(t *testing.T) *client.DPoP {
	t.Helper()
	d, err := client.NewDPoP(nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestSourceDPoPNonceRoundTrip: tokend asks for a nonce; the Source sends
// the refresh again at once with a new proof carrying it, and keeps the
// nonce of the success for the next refresh. Every request carries a
// proof by the Source's key for POST to DPoPURL, with htm and htu beside
// it, and no two share a jti.
func TestSourceDPoPNonceRoundTrip(t *testing.T) {
	f, c := startFakeTokend(t, func(n int, req wire.RefreshRequest) (string, any) {
		if n == 0 {
			return "400", wire.ErrorReply{Error: "use_dpop_nonce", Description: "a nonce is required", DPoPNonce: "n-1"}
		}
		return "", granted(n, fmt.Sprintf("n-%d", n+1))
	})
	d := newDPoP(t)
	var events []client.Event
	var mu sync.Mutex
	src, store, clk := dpopSource(t, c, client.Options{DPoP: d, DPoPURL: tokenEndpoint, Observe: func(e client.Event) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}})

	tok, err := src.Token(ctx(t), "")
	if err != nil {
		t.Fatal(err)
	}
	if tok.Token != "at-3" || tok.TokenType != "DPoP" {
		t.Fatalf("token %q type %q", tok.Token, tok.TokenType)
	}
	if st, _, _ := store.Load(ctx(t), "s1"); st.RefreshToken != "rt-3" {
		t.Fatalf("stored %q", st.RefreshToken)
	}
	if d.Nonce() != "n-2" {
		t.Fatalf("nonce %q, want the success's n-2", d.Nonce())
	}
	clk.Add(time.Hour)
	if _, err := src.Token(ctx(t), ""); err != nil {
		t.Fatal(err)
	}

	reqs := f.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want 3", len(reqs))
	}
	jtis := map[string]bool{}
	for i, want := range []struct{ token, nonce string }{{"rt-1", ""}, {"rt-1", "n-1"}, {"rt-3", "n-2"}} {
		r := reqs[i]
		p := verifyProof(t, r.DPoPProof)
		if r.RefreshToken != want.token || p.claims.Nonce != want.nonce {
			t.Errorf("request %d: token %q nonce %q, want %+v", i, r.RefreshToken, p.claims.Nonce, want)
		}
		if thumbprint(t, p.jwk) != d.JKT() || p.claims.HTM != "POST" || p.claims.HTU != tokenEndpoint ||
			p.claims.ATH != "" || r.DPoPMethod != "POST" || r.DPoPURL != tokenEndpoint {
			t.Errorf("request %d: %+v, proof %+v", i, r, p.claims)
		}
		if jtis[p.claims.JTI] {
			t.Errorf("request %d repeats a jti", i)
		}
		jtis[p.claims.JTI] = true
	}
	mu.Lock()
	defer mu.Unlock()
	for _, e := range events {
		if e.Refresh && (e.Outcome != client.OutcomeRefreshed || e.Err != nil) {
			t.Errorf("refresh event %+v", e)
		}
	}
}

// TestSourceDPoPProofPerRetry: a transient failure is retried with the
// same refresh token but a new proof, as tokend refuses a jti it saw.
func TestSourceDPoPProofPerRetry(t *testing.T) {
	f, c := startFakeTokend(t, func(n int, req wire.RefreshRequest) (string, any) {
		if n < 2 {
			return "503", wire.ErrorReply{Error: "temporarily_unavailable", Description: "busy", RetryAfterMs: 1}
		}
		return "", granted(n, "")
	})
	src, _, _ := dpopSource(t, c, client.Options{DPoP: newDPoP(t), DPoPURL: tokenEndpoint})
	if _, err := src.Token(ctx(t), ""); err != nil {
		t.Fatal(err)
	}
	reqs := f.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want 3", len(reqs))
	}
	jtis := map[string]bool{}
	for i, r := range reqs {
		p := verifyProof(t, r.DPoPProof)
		if r.RefreshToken != "rt-1" || jtis[p.claims.JTI] {
			t.Errorf("attempt %d: token %q, jti repeated %v", i, r.RefreshToken, jtis[p.claims.JTI])
		}
		jtis[p.claims.JTI] = true
	}
}

// TestSourceDPoPRefusals: a refused proof, and a nonce refused twice in a
// row, are errors that keep the session: the refresh token was not used.
// A Source with a key but no DPoPURL sends nothing.
func TestSourceDPoPRefusals(t *testing.T) {
	for _, c := range []struct {
		name     string
		reply    wire.ErrorReply
		want     error
		requests int
	}{
		{"invalid proof", wire.ErrorReply{Error: "invalid_dpop_proof", Description: "iat is too old"}, client.ErrInvalidDPoPProof, 1},
		{"nonce twice", wire.ErrorReply{Error: "use_dpop_nonce", Description: "stale nonce", DPoPNonce: "n-x"}, client.ErrUseDPoPNonce, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, cl := startFakeTokend(t, func(int, wire.RefreshRequest) (string, any) { return "400", c.reply })
			terminals := 0
			src, store, _ := dpopSource(t, cl, client.Options{DPoP: newDPoP(t), DPoPURL: tokenEndpoint,
				OnTerminal: func(error) { terminals++ }})
			_, err := src.Token(ctx(t), "")
			if !errors.Is(err, c.want) || client.Terminal(err) || client.Transient(err) {
				t.Fatalf("err %v, want %v, neither terminal nor transient", err, c.want)
			}
			if n := len(f.requests()); n != c.requests {
				t.Fatalf("%d requests, want %d", n, c.requests)
			}
			if st, _, err := store.Load(ctx(t), "s1"); err != nil || st.RefreshToken != "rt-1" || terminals != 0 {
				t.Fatalf("the session ended: %q %v, %d OnTerminal calls", st.RefreshToken, err, terminals)
			}
		})
	}

	t.Run("no DPoPURL", func(t *testing.T) {
		f, cl := startFakeTokend(t, func(n int, _ wire.RefreshRequest) (string, any) { return "", granted(n, "") })
		src, _, _ := dpopSource(t, cl, client.Options{DPoP: newDPoP(t)})
		_, err := src.Token(ctx(t), "")
		if err == nil || !strings.Contains(err.Error(), "DPoPURL") || client.Terminal(err) || client.Transient(err) {
			t.Fatalf("err %v", err)
		}
		if n := len(f.requests()); n != 0 {
			t.Fatalf("%d requests sent", n)
		}
	})
}

// TestOAuth2AdapterDPoPType: the oauth2 adapter passes the token type on,
// so that oauth2.Transport sends a bound token with the DPoP scheme.
func TestOAuth2AdapterDPoPType(t *testing.T) {
	_, c := startFakeTokend(t, func(n int, _ wire.RefreshRequest) (string, any) { return "", granted(n, "") })
	src, _, _ := dpopSource(t, c, client.Options{DPoP: newDPoP(t), DPoPURL: tokenEndpoint})
	tok, err := src.OAuth2("").Token()
	if err != nil {
		t.Fatal(err)
	}
	if tok.Type() != "DPoP" || tok.AccessToken != "at-2" {
		t.Fatalf("type %q token %q", tok.Type(), tok.AccessToken)
	}
}

// TestSessionsDPoP: a session started with StartDPoP refreshes with
// proofs by its own key, kept in DPoPKeys; when tokend refuses its proof,
// the session is signed out (family revoked, cookie cleared) and its key
// forgotten.
func TestSessionsDPoP(t *testing.T) {
	f, c := startFakeTokend(t, func(n int, _ wire.RefreshRequest) (string, any) {
		if n == 0 {
			return "", granted(n, "")
		}
		return "400", wire.ErrorReply{Error: "invalid_dpop_proof", Description: "no DPoP proof"}
	})
	keys := &client.MemoryDPoPKeys{}
	clk := newClock()
	sessions, err := client.NewSessions(c, client.NewMemoryStore(), client.SessionConfig{
		Key: []byte(strings.Repeat("k", client.MinSessionKey)), ClientID: "web", SignInURL: "/signin", Insecure: true,
		DPoPKeys: keys, Options: client.Options{Now: clk.Now, DPoPURL: tokenEndpoint}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sessions.Close)
	key := newDPoP(t)
	rec := httptest.NewRecorder()
	issued := wire.TokenReply{RefreshToken: "rt-1", FamilyID: "fam", TokenType: "DPoP", AccessToken: "at-1",
		ExpiresIn: 300, Scope: "read"}
	if err := sessions.StartDPoP(rec, httptest.NewRequest(http.MethodPost, "/signin", nil), issued, key); err != nil {
		t.Fatal(err)
	}
	cookie := rec.Result().Cookies()[0]
	id, _, _ := strings.Cut(cookie.Value, ".")
	if k, _ := keys.Key(ctx(t), id); k != key {
		t.Fatal("the session's key is not kept")
	}

	var got client.AccessToken
	var gotKey *client.DPoP
	page := sessions.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ = client.AccessTokenFrom(r.Context())
		gotKey, _ = client.DPoPFrom(r.Context())
	}))
	get := func() *http.Response {
		req := httptest.NewRequest(http.MethodGet, "/api/me", nil)
		req.AddCookie(cookie)
		rec := httptest.NewRecorder()
		page.ServeHTTP(rec, req)
		return rec.Result()
	}
	clk.Add(time.Hour)
	if resp := get(); resp.StatusCode != http.StatusOK || got.Token != "at-2" || got.TokenType != "DPoP" || gotKey != key {
		t.Fatalf("%d, token %q type %q, the session's key in the context: %v", resp.StatusCode, got.Token, got.TokenType, gotKey == key)
	}
	if reqs := f.requests(); len(reqs) != 1 || thumbprint(t, verifyProof(t, reqs[0].DPoPProof).jwk) != key.JKT() {
		t.Fatalf("the refresh was not proved with the session's key: %+v", reqs)
	}

	clk.Add(time.Hour)
	resp := get()
	if resp.StatusCode != http.StatusUnauthorized || len(resp.Cookies()) != 1 || resp.Cookies()[0].MaxAge >= 0 {
		t.Fatalf("a refused proof: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	f.mu.Lock()
	revokes := f.revokes
	f.mu.Unlock()
	if k, _ := keys.Key(ctx(t), id); k != nil || revokes != 1 {
		t.Fatalf("after sign-out: key kept %v, %d revokes", k != nil, revokes)
	}
}
