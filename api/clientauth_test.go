package api

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

func TestBasicCredentials(t *testing.T) {
	for _, tc := range []struct {
		header           string
		id, secret       string
		present, invalid bool
	}{
		{"", "", "", false, false},
		{"Bearer x", "", "", false, false},
		// RFC 6749 2.3.1: id and secret are form-encoded before joining.
		{"Basic " + b64("web%3Aapp:s%25cr%2Bt"), "web:app", "s%cr+t", true, false},
		{"Basic " + b64("plain:secret"), "plain", "secret", true, false},
		{"Basic !!!", "", "", false, true},
		{"Basic " + b64("bad%zz:x"), "", "", false, true},
	} {
		r, _ := http.NewRequest(http.MethodPost, "/", nil)
		if tc.header != "" {
			r.Header.Set("Authorization", tc.header)
		}
		id, secret, ok, err := basicCredentials(r)
		if id != tc.id || secret != tc.secret || ok != tc.present || (err != nil) != tc.invalid {
			t.Errorf("%q: %q %q %v %v", tc.header, id, secret, ok, err)
		}
	}
}

func b64(s string) string {
	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	user, pass, _ := strings.Cut(s, ":")
	r.SetBasicAuth(user, pass)
	return strings.TrimPrefix(r.Header.Get("Authorization"), "Basic ")
}

func TestClientAssertion(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	registered := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: edKey.Public(), KeyID: "ed", Algorithm: string(jose.EdDSA)},
		{Key: &ecKey.PublicKey, KeyID: "ec", Algorithm: string(jose.ES256)},
	}}
	const endpoint = "https://auth.example.com/oauth2/token"
	sign := func(key any, alg jose.SignatureAlgorithm, kid string, c jwt.Claims) string {
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key},
			(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
		if err != nil {
			t.Fatal(err)
		}
		s, err := jwt.Signed(signer).Claims(c).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	claims := func(mod func(*jwt.Claims)) jwt.Claims {
		c := jwt.Claims{Issuer: "svc", Subject: "svc", Audience: jwt.Audience{endpoint}, ID: "jti-" + time.Now().String(),
			IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(time.Minute))}
		if mod != nil {
			mod(&c)
		}
		return c
	}
	_, strangerKey, _ := ed25519.GenerateKey(rand.Reader)
	v := newAssertionVerifier([]string{endpoint, "https://auth.example.com"}, func() time.Time { return now })

	good := sign(edKey, jose.EdDSA, "ed", claims(nil))
	if err := v.verify(good, "svc", registered); err != nil {
		t.Fatalf("a good assertion: %v", err)
	}
	if err := v.verify(good, "svc", registered); !errors.Is(err, errBadAssertion) {
		t.Fatalf("the same jti again: %v", err)
	}
	if err := v.verify(sign(ecKey, jose.ES256, "ec", claims(nil)), "svc", registered); err != nil {
		t.Fatalf("an ES256 assertion: %v", err)
	}
	if err := v.verify(sign(edKey, jose.EdDSA, "", claims(nil)), "svc", registered); err != nil {
		t.Fatalf("an assertion without kid: %v", err)
	}
	refused := map[string]string{
		"another client's":      sign(edKey, jose.EdDSA, "ed", claims(func(c *jwt.Claims) { c.Issuer, c.Subject = "other", "other" })),
		"sub is not the client": sign(edKey, jose.EdDSA, "ed", claims(func(c *jwt.Claims) { c.Subject = "user-42" })),
		"for another server":    sign(edKey, jose.EdDSA, "ed", claims(func(c *jwt.Claims) { c.Audience = jwt.Audience{"https://evil.example"} })),
		"expired":               sign(edKey, jose.EdDSA, "ed", claims(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(now.Add(-2 * time.Minute)) })),
		"without exp":           sign(edKey, jose.EdDSA, "ed", claims(func(c *jwt.Claims) { c.Expiry = nil })),
		"without jti":           sign(edKey, jose.EdDSA, "ed", claims(func(c *jwt.Claims) { c.ID = "" })),
		"valid for an hour":     sign(edKey, jose.EdDSA, "ed", claims(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(now.Add(time.Hour)) })),
		"signed by another key": sign(strangerKey, jose.EdDSA, "ed", claims(nil)),
		"with an unknown kid":   sign(strangerKey, jose.EdDSA, "nope", claims(nil)),
		"not a JWT":             "not.a.jwt",
		"signed with a MAC":     sign([]byte(strings.Repeat("k", 32)), jose.HS256, "ed", claims(nil)),
	}
	for name, assertion := range refused {
		if err := v.verify(assertion, "svc", registered); !errors.Is(err, errBadAssertion) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
