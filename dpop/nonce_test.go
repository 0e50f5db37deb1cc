package dpop

import (
	"context"
	"encoding/base64"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
)

func TestNonceRoundTrip(t *testing.T) {
	h := newHolder(t, "ES256")
	now := t0
	v := &Verifier{Now: func() time.Time { return now }, Replay: newMemCache(), Keys: nonceKeys(randomKey())}
	verify := func(nonce string, required bool) (Proof, error) {
		c := validClaims(now)
		if nonce != "" {
			c["nonce"] = nonce
		}
		return v.Verify(context.Background(), Request{Proof: h.proof(t, c, nil), Method: post, URL: tokenURL, NonceRequired: required})
	}

	// Without a nonce: refused, and told which one to use.
	_, err := verify("", true)
	nonce := wantNonceRefusal(t, v, err)

	p, err := verify(nonce, true)
	if err != nil || p.Nonce != nonce {
		t.Fatalf("proof with the nonce given: %+v, %v", p, err)
	}
	// A nonce is checked where none is required too: a stale one is
	// refused the same way.
	if _, err := verify(nonce+"A", false); ReasonOf(err) != "nonce" {
		t.Fatalf("an invalid nonce where none is required: %v", err)
	}
	if _, err := verify("", false); err != nil {
		t.Fatalf("no nonce where none is required: %v", err)
	}

	// Accepted for the slot after its own, not the one after that.
	now = t0.Add(nonceSlot * time.Second)
	if _, err := verify(nonce, true); err != nil {
		t.Fatalf("a nonce of the previous slot: %v", err)
	}
	now = t0.Add(2 * nonceSlot * time.Second)
	_, err = verify(nonce, true)
	fresh := wantNonceRefusal(t, v, err)
	if fresh == nonce {
		t.Fatal("the nonce given is the stale one")
	}
	if _, err := verify(fresh, true); err != nil {
		t.Fatalf("the fresh nonce: %v", err)
	}
	// An instance whose clock is a slot behind accepts the fresh nonce.
	now = t0.Add(nonceSlot * time.Second)
	if !v.NonceValid(fresh) {
		t.Fatal("a nonce of the next slot is refused")
	}
	now = t0
	if v.NonceValid(fresh) {
		t.Fatal("a nonce two slots ahead is accepted")
	}
}

func wantNonceRefusal(t *testing.T, v *Verifier, err error) string {
	t.Helper()
	if ReasonOf(err) != "nonce" || domain.ErrorCode(err) != domain.EUseDPoPNonce {
		t.Fatalf("want use_dpop_nonce, got %v", err)
	}
	e := err.(*Refusal).Err
	if !v.NonceValid(e.DPoPNonce) {
		t.Fatalf("the nonce given, %q, is not valid", e.DPoPNonce)
	}
	return e.DPoPNonce
}

func TestNonceFormat(t *testing.T) {
	key := randomKey()
	v := &Verifier{Now: func() time.Time { return t0 }, Keys: nonceKeys(key)}
	n, err := v.Nonce()
	if err != nil {
		t.Fatal(err)
	}
	b, err := base64.RawURLEncoding.DecodeString(n)
	if err != nil || len(b) != 24 {
		t.Fatalf("nonce %q: %d bytes, %v", n, len(b), err)
	}
	slot := uint64(t0.Unix() / 300)
	var slotBytes [8]byte
	for i := range slotBytes {
		slotBytes[i] = byte(slot >> (56 - 8*i))
	}
	if string(b[:8]) != string(slotBytes[:]) || string(b[8:]) != string(hmacSHA256(key, append([]byte("dpop-nonce"), slotBytes[:]...))[:16]) {
		t.Fatal("nonce is not slot ‖ HMAC-SHA256(key, \"dpop-nonce\" ‖ slot)[:16]")
	}
	if n2, _ := v.Nonce(); n2 != n {
		t.Fatal("two nonces of one slot differ")
	}
	for _, bad := range []string{"", n + "A", n[:len(n)-1], n[:len(n)-1] + string(n[len(n)-1]^1), "!" + n[1:]} {
		if v.NonceValid(bad) {
			t.Errorf("nonce %q accepted", bad)
		}
	}
}

func TestNonceAcrossAKeyRotation(t *testing.T) {
	old, next := randomKey(), randomKey()
	before := &Verifier{Now: func() time.Time { return t0 }, Keys: nonceKeys(old)}
	n, err := before.Nonce()
	if err != nil {
		t.Fatal(err)
	}
	// Minted under the key now retired: accepted while it is in effect.
	after := &Verifier{Now: func() time.Time { return t0 }, Keys: nonceKeys(next, old)}
	if !after.NonceValid(n) {
		t.Fatal("a nonce minted before the rotation is refused")
	}
	if m, _ := after.Nonce(); m == n {
		t.Fatal("nonces are still minted under the retired key")
	}
	gone := &Verifier{Now: func() time.Time { return t0 }, Keys: nonceKeys(next)}
	if gone.NonceValid(n) {
		t.Fatal("a nonce under a key no longer in effect is accepted")
	}
}

func TestNoNonceWithoutKeys(t *testing.T) {
	v := &Verifier{Now: func() time.Time { return t0 }, Replay: newMemCache()}
	if _, err := v.Nonce(); domain.ErrorCode(err) != domain.EUnavailable {
		t.Fatalf("Nonce without keys: %v", err)
	}
	if v.NonceValid("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA") {
		t.Fatal("a nonce is valid without keys")
	}
	v.Keys = nonceKeys(nil)
	if _, err := v.Nonce(); domain.ErrorCode(err) != domain.EUnavailable {
		t.Fatalf("Nonce without a current key: %v", err)
	}
	h := newHolder(t, "ES256")
	v.Keys = nil
	if _, err := v.Verify(context.Background(), Request{Proof: h.proof(t, validClaims(t0), nil), Method: post, URL: tokenURL, NonceRequired: true}); err == nil {
		t.Fatal("a required nonce went unchecked")
	}
}
