package dpopclient

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// verifiedProof is a proof as a server reads it after checking its
// signature with the key in its own header.
type verifiedProof struct {
	Typ, Alg string
	JWK      map[string]any
	JKT      string
	Claims   struct {
		JTI   string `json:"jti"`
		HTM   string `json:"htm"`
		HTU   string `json:"htu"`
		IAT   int64  `json:"iat"`
		Nonce string `json:"nonce"`
		ATH   string `json:"ath"`
	}
}

func verifyProof(t *testing.T, proof string) verifiedProof {
	t.Helper()
	msg, err := jws.Parse([]byte(proof))
	if err != nil || len(msg.Signatures()) != 1 {
		t.Fatalf("not a compact JWS: %v", err)
	}
	h := msg.Signatures()[0].ProtectedHeaders()
	var p verifiedProof
	p.Typ, _ = h.Type()
	alg, _ := h.Algorithm()
	p.Alg = alg.String()
	key, ok := h.JWK()
	if !ok {
		t.Fatal("no jwk in the header")
	}
	payload, err := jws.Verify([]byte(proof), jws.WithKey(alg, key))
	if err != nil {
		t.Fatalf("the signature does not verify with the header's jwk: %v", err)
	}
	if err := json.Unmarshal(payload, &p.Claims); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(key)
	if err := json.Unmarshal(raw, &p.JWK); err != nil {
		t.Fatal(err)
	}
	sum, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	p.JKT = base64.RawURLEncoding.EncodeToString(sum)
	return p
}

// TestThumbprint: RFC 9449 section 6.1's jkt of the key of its section
// 4.1 example proof.
func TestThumbprint(t *testing.T) {
	public, err := jwk.ParseKey([]byte(`{"kty":"EC","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA","crv":"P-256"}`))
	if err != nil {
		t.Fatal(err)
	}
	k := &Key{public: public}
	if got, err := k.Thumbprint(); err != nil || got != "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" {
		t.Fatalf("thumbprint %q, %v", got, err)
	}
}

// TestAccessTokenHash: RFC 9449 section 7.1's example access token and
// its ath.
func TestAccessTokenHash(t *testing.T) {
	if got := AccessTokenHash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"); got != "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo" {
		t.Fatalf("ath %q", got)
	}
}

// TestProof: a proof as RFC 9449 section 4.2 describes it, for each kind
// of key, verified with the key in its header.
func TestProof(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rs, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, tc := range []struct {
		alg string
		key crypto.Signer
	}{{"ES384", ec}, {"EdDSA", ed}, {"PS256", rs}} {
		t.Run(tc.alg, func(t *testing.T) {
			k, err := NewKey(tc.key)
			if err != nil {
				t.Fatal(err)
			}
			jkt, _ := k.Thumbprint()
			before := time.Now().Unix()
			raw, err := k.Proof(ProofRequest{Method: "GET", URL: "https://rs.example.com/api/items?page=2#top", Nonce: "n-1", AccessToken: "at"})
			if err != nil {
				t.Fatal(err)
			}
			p := verifyProof(t, raw)
			if p.Typ != "dpop+jwt" || p.Alg != tc.alg || p.JKT != jkt {
				t.Fatalf("header typ %q alg %q, jwk thumbprint %q want %q", p.Typ, p.Alg, p.JKT, jkt)
			}
			for _, private := range []string{"d", "p", "q", "dp", "dq", "qi"} {
				if _, ok := p.JWK[private]; ok {
					t.Fatalf("the header's jwk has the private member %q", private)
				}
			}
			c := p.Claims
			if c.HTM != "GET" || c.HTU != "https://rs.example.com/api/items" || c.Nonce != "n-1" || c.ATH != AccessTokenHash("at") ||
				c.IAT < before || c.IAT > time.Now().Unix() || c.JTI == "" {
				t.Fatalf("claims %+v", c)
			}
			again, _ := k.Proof(ProofRequest{Method: "POST", URL: "https://as.example.com/token"})
			if a := verifyProof(t, again).Claims; a.JTI == c.JTI || a.Nonce != "" || a.ATH != "" || a.HTU != "https://as.example.com/token" {
				t.Fatalf("a second proof: %+v", a)
			}
		})
	}
	if _, err := GenerateKey(); err != nil {
		t.Fatal(err)
	}
	if _, err := (&Key{}).Proof(ProofRequest{Method: "POST", URL: "/token"}); err == nil {
		t.Fatal("a proof for a relative URL")
	}
}

// TestCheckBinding: an access token whose cnf.jkt is the key's thumbprint
// is bound to it; one of another key, or with no cnf, is not.
func TestCheckBinding(t *testing.T) {
	k, _ := GenerateKey()
	other, _ := GenerateKey()
	issuer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	accessToken := func(cnf map[string]any) string {
		b := jwt.NewBuilder().Subject("user-1").Expiration(time.Now().Add(time.Minute))
		if cnf != nil {
			b = b.Claim("cnf", cnf)
		}
		tok, _ := b.Build()
		signed, err := jwt.Sign(tok, jwt.WithKey(jwa.ES256(), issuer))
		if err != nil {
			t.Fatal(err)
		}
		return string(signed)
	}
	jkt, _ := k.Thumbprint()
	otherJKT, _ := other.Thumbprint()
	if err := k.CheckBinding(accessToken(map[string]any{"jkt": jkt})); err != nil {
		t.Fatal(err)
	}
	for name, token := range map[string]string{
		"another key": accessToken(map[string]any{"jkt": otherJKT}),
		"no cnf":      accessToken(nil),
		"x5t#S256":    accessToken(map[string]any{"x5t#S256": jkt}),
	} {
		if err := k.CheckBinding(token); !errors.Is(err, ErrNotBound) {
			t.Errorf("%s: %v, want ErrNotBound", name, err)
		}
	}
	if err := k.CheckBinding("opaque"); err == nil || errors.Is(err, ErrNotBound) || strings.Contains(err.Error(), "opaque") {
		t.Fatalf("an opaque token: %v", err)
	}
}
