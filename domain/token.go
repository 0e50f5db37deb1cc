package domain

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// A refresh token reads
//
//	rt1.<family id>.<generation>.<key id>.<secret>.<mac>
//
// with a 256-bit secret and an HMAC-SHA256 under the key named by the key id
// over everything before the MAC. A family's first secret is random; each
// later one is derived from its parent token (see MintChild). The family and
// generation are known without a lookup, forgeries fail before any I/O, and
// a verified token with an older generation is proof of an ancestor, so
// replay of any ancestor is detected without keeping old hashes.
const (
	tokenPrefix    = "rt1"
	SecretSize     = 32
	maxTokenLength = 256
	maxIDLength    = 64
)

var b64 = base64.RawURLEncoding

// Token is a verified refresh token. Its value is a secret: never log it.
type Token struct {
	FamilyID   string
	Generation uint64
	KeyID      string
	// KeyRetiredAt is when the MAC key KeyID was retired; zero while it
	// mints or is staged.
	KeyRetiredAt time.Time
	value        string
	hash         string // computed once: a refresh compares it several times
}

// newToken returns the token with value, its hash computed.
func newToken(familyID string, gen uint64, keyID string, keyRetiredAt time.Time, value string) Token {
	return Token{FamilyID: familyID, Generation: gen, KeyID: keyID, KeyRetiredAt: keyRetiredAt, value: value, hash: HashToken(value)}
}

// RetiredKeyGrace is how long a MAC key may still mint after it was
// retired: an instance learns of a promotion a moment late, and clocks
// differ a little.
const RetiredKeyGrace = time.Minute

// KeyRetiredBefore reports whether t's MAC key was retired, and out of use
// (RetiredKeyGrace), before at. No family created at at can have had a
// token under that key, so such a token with a valid MAC was made by
// someone who holds the retired key.
func (t Token) KeyRetiredBefore(at time.Time) bool {
	return !t.KeyRetiredAt.IsZero() && t.KeyRetiredAt.Add(RetiredKeyGrace).Before(at)
}

// Value returns the token string handed to clients.
func (t Token) Value() string { return t.value }

// Hash returns the hex SHA-256 of the token: the only form stored anywhere.
// The zero Token's hash is empty and equals no token's.
func (t Token) Hash() string { return t.hash }

// HashToken returns the hex SHA-256 of a token string.
func HashToken(value string) string {
	sum := sha256.Sum256([]byte(value))
	return hex.EncodeToString(sum[:])
}

// SameHash compares two token hashes in constant time.
func SameHash(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// MACKey is a refresh-token MAC key.
type MACKey struct {
	ID     string
	Secret []byte
	// RetiredAt is when the key stopped minting; zero for the current and
	// the staged key.
	RetiredAt time.Time
}

// TokenCodec mints and verifies refresh tokens. It signs with one current key
// and verifies with any key it holds, so keys can rotate.
type TokenCodec struct {
	current MACKey
	keys    map[string][]byte
	retired map[string]time.Time // the keys' RetiredAt
	// childKeys turn a parent token into its child's secret, one per MAC
	// key, derived from it (HKDF) so that no key is used for two purposes.
	childKeys map[string][]byte
}

// NewTokenCodec returns a codec that mints with current and also verifies
// tokens made under the retired keys.
func NewTokenCodec(current MACKey, retired ...MACKey) (*TokenCodec, error) {
	c := &TokenCodec{current: current, keys: map[string][]byte{}, retired: map[string]time.Time{}, childKeys: map[string][]byte{}}
	for _, k := range append([]MACKey{current}, retired...) {
		if !ValidID(k.ID) || len(k.Secret) < 32 {
			return nil, errors.New("mac key needs an id and at least 32 bytes of secret")
		}
		c.keys[k.ID] = k.Secret
		c.retired[k.ID] = k.RetiredAt
		childKey, err := hkdf.Key(sha256.New, k.Secret, nil, "tokend child secret v1", 32)
		if err != nil {
			return nil, err
		}
		c.childKeys[k.ID] = childKey
	}
	return c, nil
}

// Mint returns the token of generation gen of a family, with the given
// secret (random for a family's first token).
func (c *TokenCodec) Mint(familyID string, gen uint64, secret [SecretSize]byte) Token {
	return mintWith(c.current.ID, c.current.Secret, c.current.RetiredAt, familyID, gen, secret[:])
}

func mintWith(keyID string, key []byte, retiredAt time.Time, familyID string, gen uint64, secret []byte) Token {
	body := tokenPrefix + "." + familyID + "." + strconv.FormatUint(gen, 10) + "." + keyID + "." + b64.EncodeToString(secret)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(body))
	return newToken(familyID, gen, keyID, retiredAt, body+"."+b64.EncodeToString(mac.Sum(nil)))
}

// MintChild returns the token that replaces parent: the next generation,
// under the current key, with a secret derived from the parent token and
// the key that verified it. tokend can therefore hand the same child out
// again (to a lost reply's retry or a parallel refresh, on any instance,
// after a crash) by deriving it again, and never stores it, not even
// encrypted. Deriving it takes the parent token itself, which only its
// holder has, and the deployment's key. A parent this codec cannot verify
// has no child: ErrInvalidGrant.
func (c *TokenCodec) MintChild(parent Token) (Token, error) {
	secret, ok := c.childSecret(parent)
	if !ok {
		return Token{}, ErrInvalidGrant
	}
	return c.Mint(parent.FamilyID, parent.Generation+1, secret), nil
}

// ChildOf derives parent's child again and returns it if its hash is
// wantHash. The child may have been minted under a key that was current
// then and is retired now, so each key held is tried, the current first.
func (c *TokenCodec) ChildOf(parent Token, wantHash string) (Token, bool) {
	secret, ok := c.childSecret(parent)
	if !ok {
		return Token{}, false
	}
	if child := c.Mint(parent.FamilyID, parent.Generation+1, secret); SameHash(child.Hash(), wantHash) {
		return child, true
	}
	for id, key := range c.keys {
		if id == c.current.ID {
			continue
		}
		if child := mintWith(id, key, c.retired[id], parent.FamilyID, parent.Generation+1, secret[:]); SameHash(child.Hash(), wantHash) {
			return child, true
		}
	}
	return Token{}, false
}

// childSecret is HMAC-SHA256 of the parent token under the child key of the
// parent's own MAC key, which every instance holds while the parent verifies.
func (c *TokenCodec) childSecret(parent Token) (secret [SecretSize]byte, ok bool) {
	key, ok := c.childKeys[parent.KeyID]
	if !ok || parent.value == "" {
		return secret, false
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(parent.value))
	copy(secret[:], mac.Sum(nil))
	return secret, true
}

// Parse verifies a presented token. It returns ErrInvalidGrant for anything
// malformed, made under an unknown key, or with a wrong MAC; it does no I/O.
func (c *TokenCodec) Parse(s string) (Token, error) {
	if len(s) > maxTokenLength {
		return Token{}, ErrInvalidGrant
	}
	parts := strings.Split(s, ".")
	if len(parts) != 6 || parts[0] != tokenPrefix || !ValidID(parts[1]) {
		return Token{}, ErrInvalidGrant
	}
	gen, ok := parseGeneration(parts[2])
	key, known := c.keys[parts[3]]
	if !ok || !known {
		return Token{}, ErrInvalidGrant
	}
	secret, err := b64.DecodeString(parts[4])
	if err != nil || len(secret) != SecretSize || b64.EncodeToString(secret) != parts[4] {
		return Token{}, ErrInvalidGrant
	}
	got, err := b64.DecodeString(parts[5])
	if err != nil || len(got) != sha256.Size || b64.EncodeToString(got) != parts[5] {
		return Token{}, ErrInvalidGrant
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(s[:len(s)-len(parts[5])-1]))
	if !hmac.Equal(mac.Sum(nil), got) {
		return Token{}, ErrInvalidGrant
	}
	return newToken(parts[1], gen, parts[3], c.retired[parts[3]], s), nil
}

// NamesUnknownKey reports whether s is shaped like a refresh token and names
// a key id this codec does not hold: a key another instance may have added
// since this codec was built. It verifies nothing.
func (c *TokenCodec) NamesUnknownKey(s string) bool {
	if len(s) > maxTokenLength {
		return false
	}
	parts := strings.Split(s, ".")
	if len(parts) != 6 || parts[0] != tokenPrefix || !ValidID(parts[3]) {
		return false
	}
	_, known := c.keys[parts[3]]
	return !known
}

// parseGeneration accepts only canonical positive decimals, so one token has
// exactly one spelling.
func parseGeneration(s string) (uint64, bool) {
	if s == "" || s[0] == '0' || len(s) > 19 {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}

// ValidID reports whether s can be a family or key id: 1..64 characters of
// the URL-safe base64 alphabet, which is also safe in NATS subjects and KV keys.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > maxIDLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// NewID encodes random bytes as an id (family ids, key ids).
func NewID(random []byte) string { return b64.EncodeToString(random) }

// ValidThumbprint reports whether s has the form of an RFC 7638 SHA-256
// JWK thumbprint as DPoP carries it (RFC 9449 section 6.1): 32 bytes in
// unpadded base64url, 43 characters.
func ValidThumbprint(s string) bool {
	if len(s) != 43 {
		return false
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	return err == nil && len(b) == sha256.Size
}
