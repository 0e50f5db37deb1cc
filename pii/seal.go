package pii

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// SealedVersion is the version of the Sealed format written.
const SealedVersion = 1

// ErrOpen reports a sealed part that cannot be opened with the key given:
// altered, sealed for another event, or under another key.
var ErrOpen = errors.New("pii: sealed data cannot be opened")

// DataKey is one subject's data key. Ref names it in what it sealed: the
// subject's bucket key and the revision the key was created at, so that a
// part sealed under an erased key is told from one under the subject's
// current key (a subject erased and seen again gets a new key).
type DataKey struct {
	Ref  string
	aead cipher.AEAD
}

// Sealed is a sealed part: stored as Text.
type Sealed struct {
	V int    // format version
	K string // key ref (DataKey.Ref); "" when nothing is sealed
	N []byte // nonce
	C []byte // ciphertext and tag
}

// Seal encrypts plaintext under key with AES-256-GCM and a random nonce,
// bound to its event: it opens only for the same event id, family id and
// key, so a sealed part copied into another event does not open there.
func Seal(key DataKey, eventID, familyID string, plaintext []byte) (Sealed, error) {
	nonce := make([]byte, key.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return Sealed{}, err
	}
	c := key.aead.Seal(nil, nonce, plaintext, associatedData(eventID, familyID, key.Ref))
	return Sealed{V: SealedVersion, K: key.Ref, N: nonce, C: c}, nil
}

// Text is the stored form of s: its version, the base64url (unpadded) of
// its nonce and ciphertext, and its key ref, separated by dots
// ("1.<sealed>.<ref>"); or its version alone for a part without a key
// (nothing sealed). A string, not an object: it is copied into every
// event, read model row and reply, where a JSON object would be checked
// and compacted each time.
func (s Sealed) Text() string {
	if s.K == "" {
		return strconv.Itoa(s.V)
	}
	b := make([]byte, 0, len(s.N)+len(s.C))
	return strconv.Itoa(s.V) + "." + base64.RawURLEncoding.EncodeToString(append(append(b, s.N...), s.C...)) + "." + s.K
}

// ParseSealed parses Text's form; the nonce is the first NonceSize
// bytes (AES-GCM's) of the sealed bytes.
func ParseSealed(text string) (Sealed, error) {
	version, rest, keyed := strings.Cut(text, ".")
	v, err := strconv.Atoi(version)
	if err != nil || v != SealedVersion {
		return Sealed{}, fmt.Errorf("%w: sealed version %q unknown", ErrOpen, version)
	}
	if !keyed {
		return Sealed{V: v}, nil
	}
	sealed, ref, ok := strings.Cut(rest, ".")
	raw, err := base64.RawURLEncoding.DecodeString(sealed)
	if !ok || ref == "" || err != nil || len(raw) < NonceSize {
		return Sealed{}, fmt.Errorf("%w: not a sealed part", ErrOpen)
	}
	return Sealed{V: v, K: ref, N: raw[:NonceSize:NonceSize], C: raw[NonceSize:]}, nil
}

// NonceSize is the nonce length of every sealed part (AES-GCM's standard).
const NonceSize = 12

// Open decrypts s, sealed by Seal for the same event under key.
func Open(key DataKey, eventID, familyID string, s Sealed) ([]byte, error) {
	if s.V != SealedVersion {
		return nil, fmt.Errorf("pii: sealed version %d unknown", s.V)
	}
	// GCM panics on a nonce of another size, and a part sealed under
	// another key must not be tried with this one.
	if s.K != key.Ref || len(s.N) != key.aead.NonceSize() {
		return nil, ErrOpen
	}
	plain, err := key.aead.Open(nil, s.N, s.C, associatedData(eventID, familyID, key.Ref))
	if err != nil {
		return nil, ErrOpen
	}
	return plain, nil
}

// associatedData is the event's identity: each field with its length
// before it, so that no two different triples give the same bytes (plain
// concatenation would make ("ab","c") and ("a","bc") equal).
func associatedData(fields ...string) []byte {
	ad := []byte("tokend pii v1")
	for _, f := range fields {
		ad = binary.AppendUvarint(ad, uint64(len(f)))
		ad = append(ad, f...)
	}
	return ad
}
