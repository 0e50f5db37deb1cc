package dpop

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"sync"
	"testing"
	"time"
)

// Proofs in these tests are assembled and signed by hand, with the
// standard library's crypto, not by the JOSE library the verifier uses:
// a shared misreading of the RFC would not show otherwise.

var t0 = time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)

const (
	tokenURL = "https://as.example.com/oauth2/token"
	post     = "POST"
)

// holder is a client's key and the public JWK its proofs carry.
type holder struct {
	alg string
	key crypto.Signer
	jwk map[string]any
}

var (
	rsaKey  = sync.OnceValue(func() *rsa.PrivateKey { return mustRSA(2048) })
	rsa1024 = sync.OnceValue(func() *rsa.PrivateKey { return mustRSA(1024) })
)

func mustRSA(bits int) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		panic(err)
	}
	return k
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// newHolder returns a fresh key for alg (RSA keys are shared: slow to make).
func newHolder(tb testing.TB, alg string) holder {
	tb.Helper()
	switch alg {
	case "ES256", "ES384", "ES512":
		curve := map[string]elliptic.Curve{"ES256": elliptic.P256(), "ES384": elliptic.P384(), "ES512": elliptic.P521()}[alg]
		k, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			tb.Fatal(err)
		}
		return holder{alg, k, ecJWK(tb, &k.PublicKey)}
	case "EdDSA":
		pub, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			tb.Fatal(err)
		}
		return holder{alg, k, map[string]any{"kty": "OKP", "crv": "Ed25519", "x": b64(pub)}}
	default:
		k := rsaKey()
		return holder{alg, k, rsaJWK(&k.PublicKey)}
	}
}

func ecJWK(tb testing.TB, pub *ecdsa.PublicKey) map[string]any {
	point, err := pub.Bytes() // 0x04 ‖ x ‖ y
	if err != nil {
		tb.Fatal(err)
	}
	n := (len(point) - 1) / 2
	return map[string]any{"kty": "EC", "crv": pub.Curve.Params().Name, "x": b64(point[1 : 1+n]), "y": b64(point[1+n:])}
}

func rsaJWK(pub *rsa.PublicKey) map[string]any {
	return map[string]any{"kty": "RSA", "n": b64(pub.N.Bytes()), "e": b64(big.NewInt(int64(pub.E)).Bytes())}
}

// thumbprint is RFC 7638 by hand: the required members in lexicographic
// order, no whitespace, SHA-256.
func (h holder) thumbprint() string {
	var canonical string
	switch h.jwk["kty"] {
	case "EC":
		canonical = `{"crv":"` + h.jwk["crv"].(string) + `","kty":"EC","x":"` + h.jwk["x"].(string) + `","y":"` + h.jwk["y"].(string) + `"}`
	case "OKP":
		canonical = `{"crv":"Ed25519","kty":"OKP","x":"` + h.jwk["x"].(string) + `"}`
	case "RSA":
		canonical = `{"e":"` + h.jwk["e"].(string) + `","kty":"RSA","n":"` + h.jwk["n"].(string) + `"}`
	}
	sum := sha256.Sum256([]byte(canonical))
	return b64(sum[:])
}

// validClaims are a valid token request's proof claims at now.
func validClaims(now time.Time) map[string]any {
	jti := make([]byte, 12)
	rand.Read(jti)
	return map[string]any{"jti": b64(jti), "htm": post, "htu": tokenURL, "iat": now.Unix()}
}

// proof signs claims with a dpop+jwt header carrying h's public key;
// edit, if set, changes the header first.
func (h holder) proof(tb testing.TB, c map[string]any, edit func(header map[string]any)) string {
	tb.Helper()
	header := map[string]any{"typ": "dpop+jwt", "alg": h.alg, "jwk": h.jwk}
	if edit != nil {
		edit(header)
	}
	return h.signRaw(tb, mustJSON(tb, header), mustJSON(tb, c))
}

// signRaw signs a header and payload given as bytes, with h.alg.
func (h holder) signRaw(tb testing.TB, header, payload []byte) string {
	tb.Helper()
	input := b64(header) + "." + b64(payload)
	sig, err := signWith(h.alg, h.key, []byte(input))
	if err != nil {
		tb.Fatal(err)
	}
	return input + "." + b64(sig)
}

func signWith(alg string, key crypto.Signer, input []byte) ([]byte, error) {
	if alg == "EdDSA" {
		return ed25519.Sign(key.(ed25519.PrivateKey), input), nil
	}
	hash := map[byte]crypto.Hash{'2': crypto.SHA256, '3': crypto.SHA384, '5': crypto.SHA512}[alg[2]]
	var digest []byte
	switch hash {
	case crypto.SHA256:
		s := sha256.Sum256(input)
		digest = s[:]
	case crypto.SHA384:
		s := sha512.Sum384(input)
		digest = s[:]
	case crypto.SHA512:
		s := sha512.Sum512(input)
		digest = s[:]
	default:
		return nil, errors.New("unknown alg " + alg)
	}
	switch alg[:2] {
	case "ES":
		k := key.(*ecdsa.PrivateKey)
		r, s, err := ecdsa.Sign(rand.Reader, k, digest)
		if err != nil {
			return nil, err
		}
		size := (k.Curve.Params().BitSize + 7) / 8
		return append(r.FillBytes(make([]byte, size)), s.FillBytes(make([]byte, size))...), nil
	case "RS":
		return rsa.SignPKCS1v15(rand.Reader, key.(*rsa.PrivateKey), hash, digest)
	case "PS":
		return rsa.SignPSS(rand.Reader, key.(*rsa.PrivateKey), hash, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	}
	return nil, errors.New("unknown alg " + alg)
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// memCache is a ReplayCache in memory; err, if set, is its answer.
type memCache struct {
	mu    sync.Mutex
	until map[string]time.Time
	err   error
}

func newMemCache() *memCache { return &memCache{until: map[string]time.Time{}} }

func (c *memCache) Seen(_ context.Context, key string, until time.Time) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return false, c.err
	}
	_, seen := c.until[key]
	if !seen {
		c.until[key] = until
	}
	return seen, nil
}

func (c *memCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.until)
}

// noReplay never remembers: every proof is new to it.
type noReplay struct{}

func (noReplay) Seen(context.Context, string, time.Time) (bool, error) { return false, nil }

// fixedKeys are nonce keys.
type fixedKeys struct {
	current []byte
	all     [][]byte
}

func (k fixedKeys) NonceKeys() ([]byte, [][]byte) { return k.current, k.all }

func nonceKeys(current []byte, also ...[]byte) func() NonceKeys {
	return func() NonceKeys { return fixedKeys{current, append([][]byte{current}, also...)} }
}

func randomKey() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

func hmacSHA256(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}
