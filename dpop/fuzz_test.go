package dpop

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

// FuzzVerify: no input makes Verify panic or fail other than by a
// refusal, and none is accepted unless its signature verifies with the
// key it carries.
func FuzzVerify(f *testing.F) {
	for _, alg := range []string{"ES256", "EdDSA", "RS256", "PS384"} {
		h := newHolder(f, alg)
		f.Add(h.proof(f, validClaims(t0), nil))
	}
	f.Add(rfcProof)
	f.Add("")
	f.Add("..")
	f.Add("e30.e30.")
	f.Add("eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6Im5vbmUifQ.e30.")
	v := verifierAt(t0, noReplay{})
	f.Fuzz(func(t *testing.T, proof string) {
		p, err := v.Verify(context.Background(), Request{Proof: proof, Method: post, URL: tokenURL})
		if err != nil {
			if !slices.Contains(Reasons(), ReasonOf(err)) {
				t.Fatalf("not a refusal: %v", err)
			}
			return
		}
		// Verified again, apart from Verify.
		rawHeader, _, _ := strings.Cut(proof, ".")
		b, err := base64.RawURLEncoding.DecodeString(rawHeader)
		if err != nil {
			t.Fatal(err)
		}
		var header struct {
			Typ string          `json:"typ"`
			JWK json.RawMessage `json:"jwk"`
		}
		if err := json.Unmarshal(b, &header); err != nil || header.Typ != "dpop+jwt" {
			t.Fatalf("accepted with header %s", b)
		}
		var key jose.JSONWebKey
		if err := key.UnmarshalJSON(header.JWK); err != nil || !key.IsPublic() {
			t.Fatalf("accepted with jwk %s", header.JWK)
		}
		jws, err := jose.ParseSignedCompact(proof, DefaultAlgs)
		if err != nil {
			t.Fatalf("accepted, but not a JWS: %v", err)
		}
		if _, err := jws.Verify(key.Key); err != nil {
			t.Fatalf("accepted, but the signature does not verify: %v", err)
		}
		if jkt, _ := Thumbprint(&key); jkt != p.JKT {
			t.Fatalf("accepted with thumbprint %s, the key's is %s", p.JKT, jkt)
		}
	})
}
