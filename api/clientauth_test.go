package api

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/jti"
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
	natsURL := eventstest.MustJetStream(t).ClientURL()
	used := &recordingCache{Cache: mustJTICache(t, natsURL)}
	v := newAssertionVerifier([]string{endpoint, "https://auth.example.com"}, func() time.Time { return now }, used)
	ctx := t.Context()

	good := sign(edKey, jose.EdDSA, "ed", claims(nil))
	if err := v.verify(ctx, good, "svc", registered); err != nil {
		t.Fatalf("a good assertion: %v", err)
	}
	if want := now.Add(time.Minute + assertionLeeway); !used.until.Equal(want) {
		t.Fatalf("the jti is kept until %v, want exp + leeway %v", used.until, want)
	}
	if err := v.verify(ctx, good, "svc", registered); !errors.Is(err, errBadAssertion) {
		t.Fatalf("the same jti again: %v", err)
	}
	// Another instance, with its own connection to the same bucket.
	other := newAssertionVerifier([]string{endpoint}, func() time.Time { return now }, mustJTICache(t, natsURL))
	if err := other.verify(ctx, good, "svc", registered); !errors.Is(err, errBadAssertion) {
		t.Fatalf("the same jti on another instance: %v", err)
	}
	if err := v.verify(ctx, sign(ecKey, jose.ES256, "ec", claims(nil)), "svc", registered); err != nil {
		t.Fatalf("an ES256 assertion: %v", err)
	}
	if err := v.verify(ctx, sign(edKey, jose.EdDSA, "", claims(nil)), "svc", registered); err != nil {
		t.Fatalf("an assertion without kid: %v", err)
	}
	// authlib's default: an hour.
	hour := claims(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(now.Add(time.Hour)) })
	if err := v.verify(ctx, sign(edKey, jose.EdDSA, "ed", hour), "svc", registered); err != nil {
		t.Fatalf("an assertion valid for an hour: %v", err)
	}
	if want := now.Add(time.Hour + assertionLeeway); !used.until.Equal(want) {
		t.Fatalf("an hour's jti is kept until %v, want %v", used.until, want)
	}
	// oauth4webapi's: alg Ed25519 (RFC 9864), aud the issuer, nbf.
	o4w := func(key ed25519.PrivateKey, header string, mod func(map[string]any)) string {
		payload := map[string]any{"jti": "o4w-" + time.Now().String(), "aud": "https://auth.example.com", "exp": now.Unix() + 60,
			"iat": now.Unix(), "nbf": now.Unix(), "iss": "svc", "sub": "svc"}
		if mod != nil {
			mod(payload)
		}
		body, _ := json.Marshal(payload)
		input := base64.RawURLEncoding.EncodeToString([]byte(header)) + "." + base64.RawURLEncoding.EncodeToString(body)
		return input + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, []byte(input)))
	}
	if err := v.verify(ctx, o4w(edKey, `{"alg":"Ed25519","kid":"ed"}`, nil), "svc", registered); err != nil {
		t.Fatalf("an Ed25519 assertion: %v", err)
	}
	if err := v.verify(ctx, o4w(edKey, `{"alg":"Ed25519"}`, nil), "svc", registered); err != nil {
		t.Fatalf("an Ed25519 assertion without kid: %v", err)
	}
	refusedEd25519 := map[string]string{
		"signed by another key":      o4w(strangerKey, `{"alg":"Ed25519","kid":"ed"}`, nil),
		"naming the EC key":          o4w(edKey, `{"alg":"Ed25519","kid":"ec"}`, nil),
		"with a critical header":     o4w(edKey, `{"alg":"Ed25519","kid":"ed","crit":["b64"],"b64":false}`, nil),
		"expired":                    o4w(edKey, `{"alg":"Ed25519","kid":"ed"}`, func(p map[string]any) { p["exp"] = now.Unix() - 120 }),
		"for another client":         o4w(edKey, `{"alg":"Ed25519","kid":"ed"}`, func(p map[string]any) { p["iss"], p["sub"] = "web", "web" }),
		"with a lower-case alg name": o4w(edKey, `{"alg":"ed25519","kid":"ed"}`, nil),
	}
	for name, assertion := range refusedEd25519 {
		if err := v.verify(ctx, assertion, "svc", registered); !errors.Is(err, errBadAssertion) {
			t.Errorf("Ed25519 %s: %v", name, err)
		}
	}
	tampered := o4w(edKey, `{"alg":"Ed25519","kid":"ed"}`, nil)
	parts := strings.Split(tampered, ".")
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"svc","sub":"svc","aud":"https://auth.example.com","jti":"x","exp":` +
		fmt.Sprint(now.Unix()+60) + `}`))
	if err := v.verify(ctx, strings.Join(parts, "."), "svc", registered); !errors.Is(err, errBadAssertion) {
		t.Errorf("an Ed25519 assertion with another payload: %v", err)
	}
	refused := map[string]string{
		"another client's":      sign(edKey, jose.EdDSA, "ed", claims(func(c *jwt.Claims) { c.Issuer, c.Subject = "other", "other" })),
		"sub is not the client": sign(edKey, jose.EdDSA, "ed", claims(func(c *jwt.Claims) { c.Subject = "user-42" })),
		"for another server":    sign(edKey, jose.EdDSA, "ed", claims(func(c *jwt.Claims) { c.Audience = jwt.Audience{"https://evil.example"} })),
		"expired":               sign(edKey, jose.EdDSA, "ed", claims(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(now.Add(-2 * time.Minute)) })),
		"without exp":           sign(edKey, jose.EdDSA, "ed", claims(func(c *jwt.Claims) { c.Expiry = nil })),
		"without jti":           sign(edKey, jose.EdDSA, "ed", claims(func(c *jwt.Claims) { c.ID = "" })),
		"valid for over an hour": sign(edKey, jose.EdDSA, "ed", claims(func(c *jwt.Claims) {
			c.Expiry = jwt.NewNumericDate(now.Add(time.Hour + assertionLeeway + time.Second))
		})),
		"signed by another key": sign(strangerKey, jose.EdDSA, "ed", claims(nil)),
		"with an unknown kid":   sign(strangerKey, jose.EdDSA, "nope", claims(nil)),
		"not a JWT":             "not.a.jwt",
		"signed with a MAC":     sign([]byte(strings.Repeat("k", 32)), jose.HS256, "ed", claims(nil)),
	}
	for name, assertion := range refused {
		if err := v.verify(ctx, assertion, "svc", registered); !errors.Is(err, errBadAssertion) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestClientAssertionWithoutReplayCheck: when the jti cannot be checked
// the assertion is not accepted unchecked, and the failure is told apart
// from a bad assertion so the caller can retry.
func TestClientAssertionWithoutReplayCheck(t *testing.T) {
	ns := eventstest.MustJetStream(t)
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	registered := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "ed"}}}
	v := newAssertionVerifier([]string{"https://auth.example.com"}, time.Now, mustJTICache(t, ns.ClientURL()))
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: key}, nil)
	assertion, _ := jwt.Signed(signer).Claims(jwt.Claims{Issuer: "svc", Subject: "svc", Audience: jwt.Audience{"https://auth.example.com"},
		ID: "j", Expiry: jwt.NewNumericDate(time.Now().Add(time.Minute))}).Serialize()
	ns.Shutdown()
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if err := v.verify(ctx, assertion, "svc", registered); !errors.Is(err, errReplayCheck) || errors.Is(err, errBadAssertion) {
		t.Fatalf("with the bucket unreachable: %v", err)
	}
}

func mustJTICache(tb testing.TB, url string) *jti.Cache {
	tb.Helper()
	js, err := jetstream.New(eventstest.MustConnect(tb, url))
	if err != nil {
		tb.Fatal(err)
	}
	c, err := jti.Open(tb.Context(), js, 1, time.Now)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// recordingCache is the real cache, noting until what it was asked to
// keep the last key.
type recordingCache struct {
	*jti.Cache
	until time.Time
}

func (r *recordingCache) Seen(ctx context.Context, key string, until time.Time) (bool, error) {
	r.until = until
	return r.Cache.Seen(ctx, key, until)
}
