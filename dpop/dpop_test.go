package dpop

import (
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/tokend/tokend/domain"
)

func verifierAt(now time.Time, replay ReplayCache) *Verifier {
	return &Verifier{Now: func() time.Time { return now }, Replay: replay}
}

func TestVerifyAcceptsAProofOfEachAlgorithmFamily(t *testing.T) {
	for _, alg := range []string{"ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"} {
		t.Run(alg, func(t *testing.T) {
			h := newHolder(t, alg)
			c := validClaims(t0)
			cache := newMemCache()
			p, err := verifierAt(t0, cache).Verify(context.Background(), Request{Proof: h.proof(t, c, nil), Method: post, URL: tokenURL})
			if err != nil {
				t.Fatal(err)
			}
			want := Proof{JKT: h.thumbprint(), JTI: c["jti"].(string), IssuedAt: t0, Alg: alg}
			if !p.IssuedAt.Equal(want.IssuedAt) || p.JKT != want.JKT || p.JTI != want.JTI || p.Alg != want.Alg || p.Nonce != "" {
				t.Fatalf("proof %+v, want %+v", p, want)
			}
			// Recorded until the proof can no longer be accepted anyway.
			key := "dpop|" + want.JKT + "|" + want.JTI
			if until := cache.until[key]; !until.Equal(t0.Add(65 * time.Second)) {
				t.Fatalf("replay cache holds %q until %v, want %v", key, until, t0.Add(65*time.Second))
			}
		})
	}
}

// A proof built by a JOSE library as a client would, not by hand.
func TestVerifyAcceptsAProofSignedByGoJose(t *testing.T) {
	h := newHolder(t, "ES256")
	opts := (&jose.SignerOptions{EmbedJWK: true}).WithType("dpop+jwt")
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: h.key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(mustJSON(t, validClaims(t0)))
	if err != nil {
		t.Fatal(err)
	}
	proof, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	p, err := verifierAt(t0, newMemCache()).Verify(context.Background(), Request{Proof: proof, Method: post, URL: tokenURL})
	if err != nil || p.JKT != h.thumbprint() {
		t.Fatalf("go-jose's proof: %+v, %v", p, err)
	}
}

// RFC 9449 section 4.1, figure 3: the example proof and its key, whose
// thumbprint section 6.1 (figure 9) publishes.
const (
	rfcProof = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19" +
		".eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ" +
		".2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg"
	rfcJKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
	rfcX   = "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs"
	rfcY   = "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"
)

func TestThumbprintOfTheRFCExample(t *testing.T) {
	// RFC 7638 section 3: the required members, sorted, no whitespace.
	canonical := `{"crv":"P-256","kty":"EC","x":"` + rfcX + `","y":"` + rfcY + `"}`
	sum := sha256.Sum256([]byte(canonical))
	if b64(sum[:]) != rfcJKT {
		t.Fatalf("the RFC's thumbprint by hand: %s", b64(sum[:]))
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON([]byte(`{"kty":"EC","x":"` + rfcX + `","y":"` + rfcY + `","crv":"P-256"}`)); err != nil {
		t.Fatal(err)
	}
	if got, err := Thumbprint(&k); err != nil || got != rfcJKT {
		t.Fatalf("Thumbprint = %q, %v; want %s", got, err, rfcJKT)
	}

	// The example proof itself verifies at its time, for its URL.
	iat := time.Unix(1562262616, 0)
	p, err := verifierAt(iat, newMemCache()).Verify(context.Background(), Request{Proof: rfcProof, Method: "POST", URL: "https://server.example.com/token"})
	if err != nil || p.JKT != rfcJKT || p.JTI != "-BwC3ESc6acc2lTc" {
		t.Fatalf("the RFC's example proof: %+v, %v", p, err)
	}
}

func TestVerifyRefuses(t *testing.T) {
	es := newHolder(t, "ES256")
	other := newHolder(t, "ES256")
	ed := newHolder(t, "EdDSA")
	rs := newHolder(t, "RS256")
	weak := holder{"RS256", rsa1024(), rsaJWK(&rsa1024().PublicKey)}
	const accessToken = "an-access-token"
	athOf := func(tok string) string { s := sha256.Sum256([]byte(tok)); return b64(s[:]) }

	with := func(edit func(c map[string]any)) map[string]any {
		c := validClaims(t0)
		edit(c)
		return c
	}
	header := func(edit func(h map[string]any)) func(map[string]any) { return edit }
	valid := es.proof(t, validClaims(t0), nil)
	parts := strings.Split(valid, ".")

	tests := []struct {
		name   string
		proof  string
		req    func(*Request) // changes the request of a token endpoint's POST
		algs   []jose.SignatureAlgorithm
		reason string
	}{
		{name: "no proof", proof: "", reason: "missing"},
		{name: "too long", proof: es.proof(t, with(func(c map[string]any) { c["pad"] = strings.Repeat("x", MaxProofSize) }), nil), reason: "malformed"},
		{name: "two parts", proof: parts[0] + "." + parts[1], reason: "malformed"},
		{name: "four parts", proof: valid + ".x", reason: "malformed"},
		{name: "not base64url", proof: parts[0] + ".!!." + parts[2], reason: "malformed"},
		{name: "padded base64", proof: parts[0] + "=." + parts[1] + "." + parts[2], reason: "malformed"},
		{name: "header not JSON", proof: es.signRaw(t, []byte("typ"), mustJSON(t, validClaims(t0))), reason: "malformed"},
		{name: "header an array", proof: es.signRaw(t, []byte(`["dpop+jwt"]`), mustJSON(t, validClaims(t0))), reason: "malformed"},
		{name: "crit header", proof: es.proof(t, validClaims(t0), header(func(h map[string]any) { h["crit"] = []string{"exp"}; h["exp"] = 1 })), reason: "malformed"},
		{name: "claims not JSON", proof: es.signRaw(t, mustJSON(t, map[string]any{"typ": "dpop+jwt", "alg": "ES256", "jwk": es.jwk}), []byte("jti")), reason: "malformed"},
		{name: "claim of the wrong type", proof: es.proof(t, with(func(c map[string]any) { c["htm"] = 1 }), nil), reason: "malformed"},
		{name: "iat a string", proof: es.proof(t, with(func(c map[string]any) { c["iat"] = "1793527200" }), nil), reason: "malformed"},

		{name: "no typ", proof: es.proof(t, validClaims(t0), header(func(h map[string]any) { delete(h, "typ") })), reason: "typ"},
		{name: "typ JWT", proof: es.proof(t, validClaims(t0), header(func(h map[string]any) { h["typ"] = "JWT" })), reason: "typ"},
		{name: "typ in another case", proof: es.proof(t, validClaims(t0), header(func(h map[string]any) { h["typ"] = "DPoP+JWT" })), reason: "typ"},

		{name: "alg none", proof: b64(mustJSON(t, map[string]any{"typ": "dpop+jwt", "alg": "none", "jwk": es.jwk})) + "." + parts[1] + ".", reason: "alg"},
		{name: "alg HS256", proof: b64(mustJSON(t, map[string]any{"typ": "dpop+jwt", "alg": "HS256", "jwk": map[string]any{"kty": "oct", "k": b64([]byte("0123456789abcdef0123456789abcdef"))}})) + "." + parts[1] + "." + parts[2], reason: "alg"},
		{name: "HS256 even when allowed", proof: b64(mustJSON(t, map[string]any{"typ": "dpop+jwt", "alg": "HS256", "jwk": es.jwk})) + "." + parts[1] + "." + parts[2], algs: []jose.SignatureAlgorithm{jose.HS256, jose.ES256}, reason: "alg"},
		{name: "alg outside the allow-list", proof: rs.proof(t, validClaims(t0), nil), algs: []jose.SignatureAlgorithm{jose.ES256}, reason: "alg"},
		{name: "alg ES256K", proof: es.proof(t, validClaims(t0), header(func(h map[string]any) { h["alg"] = "ES256K" })), reason: "alg"},
		{name: "no alg", proof: es.proof(t, validClaims(t0), header(func(h map[string]any) { delete(h, "alg") })), reason: "alg"},

		{name: "no jwk", proof: es.proof(t, validClaims(t0), header(func(h map[string]any) { delete(h, "jwk") })), reason: "jwk"},
		{name: "kid instead of jwk", proof: es.proof(t, validClaims(t0), header(func(h map[string]any) { delete(h, "jwk"); h["kid"] = "k1" })), reason: "jwk"},
		{name: "private EC jwk", proof: es.proof(t, validClaims(t0), header(func(h map[string]any) { h["jwk"] = withMember(es.jwk, "d", b64(make([]byte, 32))) })), reason: "jwk"},
		{name: "private RSA jwk", proof: rs.proof(t, validClaims(t0), header(func(h map[string]any) { h["jwk"] = withMember(rs.jwk, "p", "AQAB") })), reason: "jwk"},
		{name: "symmetric jwk", proof: es.proof(t, validClaims(t0), header(func(h map[string]any) { h["jwk"] = map[string]any{"kty": "oct", "k": b64(make([]byte, 32))} })), reason: "jwk"},
		{name: "jwk not an object", proof: es.proof(t, validClaims(t0), header(func(h map[string]any) { h["jwk"] = "key" })), reason: "jwk"},
		{name: "point off the curve", proof: es.proof(t, validClaims(t0), header(func(h map[string]any) { h["jwk"] = withMember(es.jwk, "y", es.jwk["x"]) })), reason: "jwk"},
		{name: "RSA key of 1024 bits", proof: weak.proof(t, validClaims(t0), nil), reason: "jwk"},
		{name: "P-256 key with ES384", proof: es.proof(t, validClaims(t0), header(func(h map[string]any) { h["alg"] = "ES384" })), reason: "jwk"},
		{name: "Ed25519 key with ES256", proof: ed.proof(t, validClaims(t0), header(func(h map[string]any) { h["alg"] = "ES256" })), reason: "jwk"},
		{name: "RSA key with EdDSA", proof: rs.proof(t, validClaims(t0), header(func(h map[string]any) { h["alg"] = "EdDSA" })), reason: "jwk"},

		{name: "signed by another key", proof: other.proof(t, validClaims(t0), header(func(h map[string]any) { h["jwk"] = es.jwk })), reason: "signature"},
		{name: "claims changed after signing", proof: parts[0] + "." + b64(mustJSON(t, validClaims(t0))) + "." + parts[2], reason: "signature"},
		{name: "no signature", proof: parts[0] + "." + parts[1] + ".", reason: "signature"},

		{name: "no jti", proof: es.proof(t, with(func(c map[string]any) { delete(c, "jti") }), nil), reason: "jti"},
		{name: "empty jti", proof: es.proof(t, with(func(c map[string]any) { c["jti"] = "" }), nil), reason: "jti"},
		{name: "jti of 257 bytes", proof: es.proof(t, with(func(c map[string]any) { c["jti"] = strings.Repeat("j", 257) }), nil), reason: "jti"},

		{name: "no htm", proof: es.proof(t, with(func(c map[string]any) { delete(c, "htm") }), nil), reason: "htm"},
		{name: "htm GET", proof: es.proof(t, with(func(c map[string]any) { c["htm"] = "GET" }), nil), reason: "htm"},
		{name: "htm in lower case", proof: es.proof(t, with(func(c map[string]any) { c["htm"] = "post" }), nil), reason: "htm"},

		{name: "no htu", proof: es.proof(t, with(func(c map[string]any) { delete(c, "htu") }), nil), reason: "htu"},
		{name: "htu of another path", proof: es.proof(t, with(func(c map[string]any) { c["htu"] = "https://as.example.com/oauth2/revoke" }), nil), reason: "htu"},
		{name: "htu of another host", proof: es.proof(t, with(func(c map[string]any) { c["htu"] = "https://evil.example.com/oauth2/token" }), nil), reason: "htu"},
		{name: "htu over http", proof: es.proof(t, with(func(c map[string]any) { c["htu"] = "http://as.example.com/oauth2/token" }), nil), reason: "htu"},
		{name: "htu relative", proof: es.proof(t, with(func(c map[string]any) { c["htu"] = "/oauth2/token" }), nil), reason: "htu"},
		{name: "request URL relative", proof: valid, req: func(r *Request) { r.URL = "/oauth2/token" }, reason: "htu"},

		{name: "no iat", proof: es.proof(t, with(func(c map[string]any) { delete(c, "iat") }), nil), reason: "iat"},
		{name: "iat too old", proof: es.proof(t, with(func(c map[string]any) { c["iat"] = t0.Add(-66 * time.Second).Unix() }), nil), reason: "iat"},
		{name: "iat in the future", proof: es.proof(t, with(func(c map[string]any) { c["iat"] = t0.Add(6 * time.Second).Unix() }), nil), reason: "iat"},
		{name: "iat negative", proof: es.proof(t, with(func(c map[string]any) { c["iat"] = -1 }), nil), reason: "iat"},
		{name: "iat huge", proof: es.proof(t, with(func(c map[string]any) { c["iat"] = 1e300 }), nil), reason: "iat"},

		{name: "ath at the token endpoint", proof: es.proof(t, with(func(c map[string]any) { c["ath"] = athOf(accessToken) }), nil), reason: "ath"},
		{name: "no ath with an access token", proof: valid, req: func(r *Request) { r.AccessToken = accessToken }, reason: "ath"},
		{name: "ath of another token", proof: es.proof(t, with(func(c map[string]any) { c["ath"] = athOf("another") }), nil), req: func(r *Request) { r.AccessToken = accessToken }, reason: "ath"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cache := newMemCache()
			v := verifierAt(t0, cache)
			v.Algs = tt.algs
			r := Request{Proof: tt.proof, Method: post, URL: tokenURL}
			if tt.req != nil {
				tt.req(&r)
			}
			_, err := v.Verify(context.Background(), r)
			if got := ReasonOf(err); got != tt.reason {
				t.Fatalf("refused for %q (%v), want %q", got, err, tt.reason)
			}
			if code := domain.ErrorCode(err); code != domain.EInvalidDPoPProof {
				t.Fatalf("code %s, want %s", code, domain.EInvalidDPoPProof)
			}
			if cache.len() != 0 {
				t.Fatal("a refused proof's jti was recorded")
			}
		})
	}
}

func withMember(jwk map[string]any, name string, value any) map[string]any {
	out := map[string]any{name: value}
	for k, v := range jwk {
		if k != name {
			out[k] = v
		}
	}
	return out
}

func TestVerifyChecksAthOfResourceRequests(t *testing.T) {
	h := newHolder(t, "EdDSA")
	const token = "eyJhbGciOiJFZERTQSJ9.e30.sig"
	c := validClaims(t0)
	c["htm"], c["htu"] = "GET", "https://api.example.com/things?page=2"
	sum := sha256.Sum256([]byte(token))
	c["ath"] = b64(sum[:])
	_, err := verifierAt(t0, newMemCache()).Verify(context.Background(), Request{Proof: h.proof(t, c, nil), Method: "GET", URL: "https://API.example.com:443/things", AccessToken: token})
	if err != nil {
		t.Fatal(err)
	}
}

func TestVerifyIatWindow(t *testing.T) {
	h := newHolder(t, "ES256")
	tests := []struct {
		name       string
		maxAge     time.Duration
		skew       time.Duration
		iat        any
		wantReason string
	}{
		{name: "oldest accepted", iat: t0.Add(-65 * time.Second).Unix()},
		{name: "a second older", iat: t0.Add(-66 * time.Second).Unix(), wantReason: "iat"},
		{name: "half a second older", iat: float64(t0.Add(-65*time.Second).Unix()) - 0.5, wantReason: "iat"},
		{name: "latest accepted", iat: t0.Add(5 * time.Second).Unix()},
		{name: "a second later", iat: t0.Add(6 * time.Second).Unix(), wantReason: "iat"},
		{name: "fractional", iat: float64(t0.Unix()) + 0.25},
		{name: "own max age, oldest", maxAge: 10 * time.Second, skew: time.Second, iat: t0.Add(-11 * time.Second).Unix()},
		{name: "own max age, too old", maxAge: 10 * time.Second, skew: time.Second, iat: t0.Add(-12 * time.Second).Unix(), wantReason: "iat"},
		{name: "own skew, latest", maxAge: 10 * time.Second, skew: time.Second, iat: t0.Add(time.Second).Unix()},
		{name: "own skew, too late", maxAge: 10 * time.Second, skew: time.Second, iat: t0.Add(2 * time.Second).Unix(), wantReason: "iat"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validClaims(t0)
			c["iat"] = tt.iat
			v := verifierAt(t0, newMemCache())
			v.MaxAge, v.Skew = tt.maxAge, tt.skew
			_, err := v.Verify(context.Background(), Request{Proof: h.proof(t, c, nil), Method: post, URL: tokenURL})
			if got := ReasonOf(err); got != tt.wantReason || (tt.wantReason == "" && err != nil) {
				t.Fatalf("refused for %q (%v), want %q", got, err, tt.wantReason)
			}
		})
	}
}

func TestVerifyRefusesAReplay(t *testing.T) {
	h := newHolder(t, "ES256")
	cache := newMemCache()
	v := verifierAt(t0, cache)
	r := Request{Proof: h.proof(t, validClaims(t0), nil), Method: post, URL: tokenURL}
	if _, err := v.Verify(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	_, err := v.Verify(context.Background(), r)
	if ReasonOf(err) != "replay" || domain.ErrorCode(err) != domain.EInvalidDPoPProof {
		t.Fatalf("the proof again: %v", err)
	}
	// The same jti under another key is another proof.
	c := validClaims(t0)
	c["jti"] = cache.jtiOf(t)
	if _, err := v.Verify(context.Background(), Request{Proof: newHolder(t, "ES256").proof(t, c, nil), Method: post, URL: tokenURL}); err != nil {
		t.Fatalf("one jti under another key: %v", err)
	}
}

// jtiOf returns the jti of the one proof recorded.
func (c *memCache) jtiOf(t *testing.T) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.until {
		return k[strings.LastIndexByte(k, '|')+1:]
	}
	t.Fatal("no proof recorded")
	return ""
}

func TestVerifyIsUnavailableWhenTheReplayCacheIs(t *testing.T) {
	h := newHolder(t, "ES256")
	cache := newMemCache()
	cache.err = errors.New("nats: timeout")
	_, err := verifierAt(t0, cache).Verify(context.Background(), Request{Proof: h.proof(t, validClaims(t0), nil), Method: post, URL: tokenURL})
	var e *domain.Error
	if !errors.As(err, &e) || e.Code != domain.EUnavailable || e.RetryAfterMs <= 0 || ReasonOf(err) != "" {
		t.Fatalf("replay cache down: %v", err)
	}
	if strings.Contains(e.Message, "nats") {
		t.Fatal("the reply names the cause")
	}
	if _, err := verifierAt(t0, nil).Verify(context.Background(), Request{Proof: h.proof(t, validClaims(t0), nil), Method: post, URL: tokenURL}); err == nil {
		t.Fatal("accepted without a replay cache")
	}
}

func TestAlgValues(t *testing.T) {
	if got := strings.Join((&Verifier{}).AlgValues(), " "); got != "ES256 ES384 ES512 EdDSA RS256 RS384 RS512 PS256 PS384 PS512" {
		t.Fatalf("default algs %s", got)
	}
	v := &Verifier{Algs: []jose.SignatureAlgorithm{jose.EdDSA, jose.HS256, jose.ES256}}
	if got := strings.Join(v.AlgValues(), " "); got != "EdDSA ES256" {
		t.Fatalf("algs %s", got)
	}
}

func BenchmarkVerify(b *testing.B) {
	for _, alg := range []string{"ES256", "EdDSA", "RS256"} {
		b.Run(alg, func(b *testing.B) {
			h := newHolder(b, alg)
			v := verifierAt(t0, noReplay{})
			r := Request{Proof: h.proof(b, validClaims(t0), nil), Method: post, URL: tokenURL}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(context.Background(), r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestParseAlgs(t *testing.T) {
	for list, want := range map[string]string{
		"ES256":                                  "ES256",
		" ES256 , EdDSA":                         "ES256,EdDSA",
		"PS256,PS256,RS256":                      "PS256,RS256",
		"HS256":                                  "",
		"none":                                   "",
		"":                                       "",
		"ES256,":                                 "",
		"ES256K":                                 "",
		strings.Join(AlgNames(DefaultAlgs), ","): strings.Join(AlgNames(DefaultAlgs), ","),
	} {
		algs, err := ParseAlgs(list)
		if got := strings.Join(AlgNames(algs), ","); got != want || (want == "") != (err != nil) {
			t.Errorf("ParseAlgs(%q) = %q, %v; want %q", list, got, err, want)
		}
	}
}

// TestReasonsNameEveryRefusal: every reason Verify refuses with is listed,
// so the metric has its series from the start.
func TestReasonsNameEveryRefusal(t *testing.T) {
	src, err := os.ReadFile("dpop.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?:refuse\(|Reason: )"([a-z_]+)"`).FindAllSubmatch(src, -1) {
		if !slices.Contains(Reasons(), string(m[1])) {
			t.Errorf("reason %q is not in Reasons()", m[1])
		}
	}
}
