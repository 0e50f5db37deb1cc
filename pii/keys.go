// Package pii protects personal data by crypto-shredding: personal fields
// are sealed under a data key per subject (person), kept outside the event
// log in the KV bucket TOKENS_SUBJECT_KEYS; erasing a subject destroys its
// key, which leaves every copy of its sealed fields unreadable, backups of
// the log included. Subjects are looked up by a keyed pseudonym, never by
// the clear value.
package pii

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// minDeploymentKey is the shortest deployment key accepted: a shorter one
// could be guessed, and every sub-key is only as strong as it.
const minDeploymentKey = 32

// pseudonymBytes is how much of the HMAC a pseudonym keeps: 128 bits, so
// that two subjects share one only by a collision no deployment reaches
// (birthday bound 2^64), in 22 characters per event.
const pseudonymBytes = 16

// pseudonymPrefix marks a subject field holding a pseudonym.
const pseudonymPrefix = "p:"

// Distinct HKDF infos keep the sub-keys independent: knowing one (the
// lookup key is used on every request) tells nothing of the other.
const (
	lookupInfo = "tokend pii lookup v1"
	kekInfo    = "tokend pii kek v1"
)

// LoadDeploymentKey reads the deployment key from path. Any high-entropy
// text of at least 32 bytes works (surrounding white space is ignored, as
// for --js-key-file): the keys are derived from it. A file other users may
// read is refused: whoever reads it can read every subject's data.
func LoadDeploymentKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if info.Mode().Perm()&0o007 != 0 {
		return nil, fmt.Errorf("%s: the key file must not be readable or writable by other users (chmod o-rwx)", path)
	}
	raw, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	key := strings.TrimSpace(string(raw))
	if len(key) < minDeploymentKey {
		return nil, fmt.Errorf("%s: the key must be at least %d bytes (e.g. openssl rand -base64 48)", path, minDeploymentKey)
	}
	return []byte(key), nil
}

// Keys are the deployment's sub-keys, derived from its deployment key and
// never stored.
type Keys struct {
	lookup []byte      // HMAC key of the pseudonyms
	kek    cipher.AEAD // wraps the data keys in the bucket
}

// NewKeys derives the sub-keys from a deployment key (LoadDeploymentKey).
func NewKeys(deploymentKey []byte) (*Keys, error) {
	if len(deploymentKey) < minDeploymentKey {
		return nil, fmt.Errorf("pii: the deployment key must be at least %d bytes", minDeploymentKey)
	}
	lookup, err := hkdf.Key(sha256.New, deploymentKey, nil, lookupInfo, 32)
	if err != nil {
		return nil, err
	}
	kekBytes, err := hkdf.Key(sha256.New, deploymentKey, nil, kekInfo, 32)
	if err != nil {
		return nil, err
	}
	kek, err := newAEAD(kekBytes)
	if err != nil {
		return nil, err
	}
	return &Keys{lookup: lookup, kek: kek}, nil
}

// Pseudonym returns the subject's pseudonym: "p:" and the base64url
// (unpadded, 22 characters) of the first 128 bits of HMAC-SHA256(lookup
// key, subject). The same subject always gets the same pseudonym, so
// lookups by subject work on it; without the deployment key it cannot be
// computed, so a guessed subject cannot be checked against the log.
func (k *Keys) Pseudonym(subject string) string {
	mac := hmac.New(sha256.New, k.lookup)
	mac.Write([]byte(subject))
	return pseudonymPrefix + base64.RawURLEncoding.EncodeToString(mac.Sum(nil)[:pseudonymBytes])
}

// IsPseudonym reports whether s has the shape of a pseudonym. A subject
// in clear may have it too (any printable string is a subject): use it
// only where the caller says it gives a pseudonym.
func IsPseudonym(s string) bool {
	rest, ok := strings.CutPrefix(s, pseudonymPrefix)
	if !ok || len(rest) != base64.RawURLEncoding.EncodedLen(pseudonymBytes) {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(rest)
	return err == nil
}

// bucketKey is the KV key of a pseudonym's data key: its base64url part,
// whose characters KV keys all allow.
func bucketKey(pseudonym string) string { return strings.TrimPrefix(pseudonym, pseudonymPrefix) }

// newWrappedKey makes a data key's secret and wraps it with the KEK (the
// nonce before the ciphertext). ad names the entry it is stored under: a
// wrapped key moved to another entry does not open there.
func (k *Keys) newWrappedKey(ad string) (secret, wrapped []byte, err error) {
	secret = make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return nil, nil, err
	}
	nonce := make([]byte, k.kek.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, nil, err
	}
	return secret, k.kek.Seal(nonce, nonce, secret, []byte(ad)), nil
}

// unwrapKey opens what newWrappedKey wrapped under the same ad; it fails
// on another entry's key or one wrapped with another deployment key.
func (k *Keys) unwrapKey(wrapped []byte, ad string) ([]byte, error) {
	n := k.kek.NonceSize()
	if len(wrapped) < n {
		return nil, errors.New("not a wrapped key")
	}
	return k.kek.Open(nil, wrapped[:n], wrapped[n:], []byte(ad))
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
