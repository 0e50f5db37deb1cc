package ssfreceiver

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	testIssuer   = "https://transmitter.example"
	testAudience = "receiver-1"
)

var (
	keysOnce          sync.Once
	testKey, otherKey *rsa.PrivateKey
	smallKey          *rsa.PrivateKey
)

// keys returns the test's RSA keys, made once: key generation is slow
// under -race.
func keys(t *testing.T) {
	t.Helper()
	keysOnce.Do(func() {
		testKey, _ = rsa.GenerateKey(rand.Reader, 2048)
		otherKey, _ = rsa.GenerateKey(rand.Reader, 2048)
		smallKey, _ = rsa.GenerateKey(rand.Reader, 1024) //nolint:gosec // the receiver must refuse it
	})
}

// jwksServer publishes the public keys by kid as a JWKS (RFC 7517) and
// counts its fetches.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	keys    map[string]*rsa.PublicKey
	fetches atomic.Int32
}

func newJWKS(t *testing.T, keys map[string]*rsa.PublicKey) *jwksServer {
	s := &jwksServer{keys: keys}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		defer s.mu.Unlock()
		var set struct {
			Keys []map[string]string `json:"keys"`
		}
		for kid, k := range s.keys {
			set.Keys = append(set.Keys, map[string]string{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
				"n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())})
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) publish(kid string, k *rsa.PublicKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[kid] = k
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// sign makes a compact JWS by hand (RFC 7515 section 3.1), RS256 with key
// unless header names another alg, in which case the signature is junk.
func sign(t *testing.T, header, claims map[string]any, key *rsa.PrivateKey) string {
	t.Helper()
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	input := b64(h) + "." + b64(c)
	if header["alg"] != "RS256" {
		return input + "." + b64([]byte("not a signature"))
	}
	sum := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + b64(sig)
}

func goodHeader() map[string]any {
	return map[string]any{"alg": "RS256", "typ": "secevent+jwt", "kid": "set-1"}
}

func goodClaims() map[string]any {
	return map[string]any{"iss": testIssuer, "aud": testAudience, "jti": "6c1f0e5a", "iat": time.Now().Unix(),
		"txn": "evt-1", "toe": time.Now().Add(-time.Second).Unix(),
		"sub_id": map[string]any{"format": "opaque", "id": "stream-1"},
		"events": map[string]any{TypeVerification: map[string]any{"state": "abc"}}}
}

func newTestVerifier(t *testing.T) (*Verifier, *jwksServer) {
	keys(t)
	jwks := newJWKS(t, map[string]*rsa.PublicKey{"set-1": &testKey.PublicKey})
	return NewVerifier(testIssuer, testAudience, jwks.URL, jwks.Client()), jwks
}

func TestVerifyTakesAWellFormedSET(t *testing.T) {
	v, _ := newTestVerifier(t)
	claims := goodClaims()
	claims["aud"] = []string{"other-receiver", testAudience} // one of several audiences
	set, err := v.Verify(t.Context(), []byte(sign(t, goodHeader(), claims, testKey)))
	if err != nil {
		t.Fatal(err)
	}
	if state, ok := set.VerificationState(); !ok || state != "abc" || set.JTI != "6c1f0e5a" || set.Txn != "evt-1" ||
		set.Issuer != testIssuer || len(set.Audience) != 2 || set.TimeOfEvent.IsZero() || string(set.SubjectID) != `{"format":"opaque","id":"stream-1"}` {
		t.Fatalf("%+v", set)
	}
	// RFC 7515 section 4.1.9: typ compares case-insensitively, with or
	// without application/.
	h := goodHeader()
	h["typ"] = "application/SECEVENT+JWT"
	if _, err := v.Verify(t.Context(), []byte(sign(t, h, goodClaims(), testKey))); err != nil {
		t.Fatalf("typ %q: %v", h["typ"], err)
	}
}

// TestVerifyRefuses: each check of RFC 8417 and SSF 1.0 section 4 fails a
// SET that breaks it, with the RFC 8935 error code to answer.
func TestVerifyRefuses(t *testing.T) {
	v, _ := newTestVerifier(t)
	for _, tc := range []struct {
		name   string
		header func(map[string]any)
		claims func(map[string]any)
		key    *rsa.PrivateKey
		want   string
	}{
		{name: "another audience", claims: func(c map[string]any) { c["aud"] = "receiver-2" }, want: ErrInvalidAudience},
		{name: "no audience", claims: func(c map[string]any) { delete(c, "aud") }, want: ErrInvalidAudience},
		{name: "another issuer", claims: func(c map[string]any) { c["iss"] = "https://evil.example" }, want: ErrInvalidIssuer},
		{name: "no issuer", claims: func(c map[string]any) { delete(c, "iss") }, want: ErrInvalidIssuer},
		{name: "typ JWT", header: func(h map[string]any) { h["typ"] = "JWT" }, want: ErrInvalidRequest},
		{name: "no typ", header: func(h map[string]any) { delete(h, "typ") }, want: ErrInvalidRequest},
		{name: "signed by another key", key: otherKey, want: ErrInvalidKey},
		{name: "a kid not in the JWKS", header: func(h map[string]any) { h["kid"] = "set-9" }, want: ErrInvalidKey},
		{name: "no kid", header: func(h map[string]any) { delete(h, "kid") }, want: ErrInvalidKey},
		{name: "alg none", header: func(h map[string]any) { h["alg"] = "none" }, want: ErrInvalidRequest},
		{name: "alg HS256", header: func(h map[string]any) { h["alg"] = "HS256" }, want: ErrInvalidRequest},
		{name: "a sub", claims: func(c map[string]any) { c["sub"] = "user-1" }, want: ErrInvalidRequest},
		{name: "an exp", claims: func(c map[string]any) { c["exp"] = time.Now().Add(time.Hour).Unix() }, want: ErrInvalidRequest},
		{name: "no jti", claims: func(c map[string]any) { delete(c, "jti") }, want: ErrInvalidRequest},
		{name: "no iat", claims: func(c map[string]any) { delete(c, "iat") }, want: ErrInvalidRequest},
		{name: "iat in the future", claims: func(c map[string]any) { c["iat"] = time.Now().Add(time.Hour).Unix() }, want: ErrInvalidRequest},
		{name: "no events", claims: func(c map[string]any) { delete(c, "events") }, want: ErrInvalidRequest},
		{name: "two events", claims: func(c map[string]any) {
			c["events"] = map[string]any{TypeSessionRevoked: map[string]any{}, TypeCredentialCompromise: map[string]any{}}
		}, want: ErrInvalidRequest},
		{name: "an event that is no object", claims: func(c map[string]any) { c["events"] = map[string]any{TypeSessionRevoked: "x"} }, want: ErrInvalidRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, c, key := goodHeader(), goodClaims(), testKey
			if tc.header != nil {
				tc.header(h)
			}
			if tc.claims != nil {
				tc.claims(c)
			}
			if tc.key != nil {
				key = tc.key
			}
			_, err := v.Verify(t.Context(), []byte(sign(t, h, c, key)))
			var refused *Error
			if !errors.As(err, &refused) || refused.Code != tc.want {
				t.Fatalf("got %v, want %s", err, tc.want)
			}
		})
	}
	for _, raw := range []string{"", "a.b", "not-a-jws", sign(t, goodHeader(), goodClaims(), testKey) + ".extra"} {
		var refused *Error
		if _, err := v.Verify(t.Context(), []byte(raw)); !errors.As(err, &refused) || refused.Code != ErrInvalidRequest {
			t.Errorf("%q: %v", raw, err)
		}
	}
}

// TestVerifyFollowsAKeyRotation: a SET signed with a key published after
// the JWKS was fetched verifies once the JWKS is fetched again; an
// unknown kid makes it fetch at most once per minRefetch.
func TestVerifyFollowsAKeyRotation(t *testing.T) {
	v, jwks := newTestVerifier(t)
	if _, err := v.Verify(t.Context(), []byte(sign(t, goodHeader(), goodClaims(), testKey))); err != nil {
		t.Fatal(err)
	}
	jwks.publish("set-2", &otherKey.PublicKey)
	h := goodHeader()
	h["kid"] = "set-2"
	rotated := []byte(sign(t, h, goodClaims(), otherKey))
	var refused *Error
	if _, err := v.Verify(t.Context(), rotated); !errors.As(err, &refused) || refused.Code != ErrInvalidKey || jwks.fetches.Load() != 1 {
		t.Fatalf("a new kid right after a fetch: %v, %d fetches", err, jwks.fetches.Load())
	}
	v.keys.fetched = time.Now().Add(-minRefetch)
	if _, err := v.Verify(t.Context(), rotated); err != nil || jwks.fetches.Load() != 2 {
		t.Fatalf("after minRefetch: %v, %d fetches", err, jwks.fetches.Load())
	}
}

// TestVerifyRefusesSmallKeys: a JWKS with an RSA key under 2048 bits (the
// CAEP interoperability profile's minimum) verifies nothing.
func TestVerifyRefusesSmallKeys(t *testing.T) {
	keys(t)
	jwks := newJWKS(t, map[string]*rsa.PublicKey{"set-1": &smallKey.PublicKey})
	v := NewVerifier(testIssuer, testAudience, jwks.URL, jwks.Client())
	if set, err := v.Verify(t.Context(), []byte(sign(t, goodHeader(), goodClaims(), smallKey))); err == nil {
		t.Fatalf("verified with a 1024-bit key: %+v", set)
	}
}

func TestWellKnownGoesBetweenHostAndPath(t *testing.T) {
	for issuer, want := range map[string]string{
		"https://tr.example.com":          "https://tr.example.com/.well-known/ssf-configuration",
		"https://tr.example.com/":         "https://tr.example.com/.well-known/ssf-configuration",
		"https://tr.example.com/issuer1":  "https://tr.example.com/.well-known/ssf-configuration/issuer1",
		"https://tr.example.com/issuer1/": "https://tr.example.com/.well-known/ssf-configuration/issuer1",
	} {
		if got := wellKnown(issuer, "ssf-configuration"); got != want {
			t.Errorf("%s: %s, want %s", issuer, got, want)
		}
	}
}
