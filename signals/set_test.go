package signals

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
)

// testSigner is a Signer over one key, as the keyring's set key would be.
type testSigner struct {
	kid string
	key crypto.Signer
}

func (s testSigner) SETKey() (string, crypto.Signer, error) { return s.kid, s.key, nil }

var (
	rsaOnce sync.Once
	rsaKey  *rsa.PrivateKey
)

func mustRSAKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	rsaOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			t.Fatal(err)
		}
	})
	return rsaKey
}

// receivedSET is what a receiver reads from a SET, with every claim it
// must check; unknown claims land in extra.
type receivedSET struct {
	jwt.Claims
	Txn    string                     `json:"txn"`
	TOE    int64                      `json:"toe"`
	SubID  map[string]any             `json:"sub_id"`
	Events map[string]json.RawMessage `json:"events"`
}

// verifyAsReceiver checks a SET as a receiver would, with go-jose and the
// transmitter's public key: RS256, typ secevent+jwt, the kid, iss and aud.
func verifyAsReceiver(t *testing.T, set string, pub *rsa.PublicKey, kid, iss, aud string) (receivedSET, map[string]any) {
	t.Helper()
	tok, err := jwt.ParseSigned(set, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	h := tok.Headers[0]
	if h.Algorithm != "RS256" || h.KeyID != kid || h.ExtraHeaders[jose.HeaderType] != SETType {
		t.Fatalf("header alg %s kid %s typ %v", h.Algorithm, h.KeyID, h.ExtraHeaders[jose.HeaderType])
	}
	var c receivedSET
	var all map[string]any
	if err := tok.Claims(pub, &c, &all); err != nil {
		t.Fatalf("the signature does not verify: %v", err)
	}
	if err := c.Validate(jwt.Expected{Issuer: iss, AnyAudience: jwt.Audience{aud}, Time: at.Add(time.Hour)}); err != nil {
		t.Fatalf("claims: %v", err)
	}
	return c, all
}

func TestEncodeSET(t *testing.T) {
	key := mustRSAKey(t)
	signer := testSigner{kid: "set-1", key: key}
	st := Stream{ID: "0123456789abcdef0123456789abcdef", Audience: []string{"rp-1"}}
	env := envelope(domain.FamilyRevoked, domain.ReasonReplayDetected)
	sig := Mapper{Issuer: issuer}.Family(env)[0]
	now := at.Add(3 * time.Second)
	set, err := EncodeSET(signer, sig.Claims(issuer, st, now))
	if err != nil {
		t.Fatal(err)
	}
	c, all := verifyAsReceiver(t, set, &key.PublicKey, "set-1", issuer, "rp-1")
	if c.ID != JTI(st.ID, env.ID, TypeSessionRevoked) || c.IssuedAt.Time().Unix() != now.Unix() || c.Txn != env.ID || c.TOE != at.Unix() {
		t.Fatalf("claims %+v", c)
	}
	// SSF 1.0 sections 4.1.2 and 4.1.7: no sub, no exp.
	for _, forbidden := range []string{"sub", "exp"} {
		if _, ok := all[forbidden]; ok {
			t.Errorf("the SET has %s", forbidden)
		}
	}
	if all["aud"] != "rp-1" {
		t.Errorf("aud %v, want the single string", all["aud"])
	}
	if c.SubID["format"] != FormatComplex || c.SubID["session"].(map[string]any)["id"] != "fam-1" ||
		c.SubID["user"].(map[string]any)["sub"] != "user-42" || c.SubID["user"].(map[string]any)["iss"] != issuer {
		t.Fatalf("sub_id %v", c.SubID)
	}
	if len(c.Events) != 1 {
		t.Fatalf("%d events in one SET, want 1 (CAEP interoperability profile)", len(c.Events))
	}
	var ev map[string]any
	if err := json.Unmarshal(c.Events[TypeSessionRevoked], &ev); err != nil {
		t.Fatal(err)
	}
	if ev["initiating_entity"] != InitiatedByPolicy || ev["reason_admin"].(map[string]any)["en"] == "" ||
		ev["event_timestamp"] != float64(at.Unix()) || ev["tokend_reason"] != domain.ReasonReplayDetected {
		t.Fatalf("event %v", ev)
	}

	// Another key does not verify it.
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	tok, _ := jwt.ParseSigned(set, []jose.SignatureAlgorithm{jose.RS256})
	var x map[string]any
	if err := tok.Claims(&other.PublicKey, &x); err == nil {
		t.Fatal("the SET verifies under another key")
	}
}

func TestJTI(t *testing.T) {
	a := JTI("s1", "evt-1", TypeSessionRevoked)
	if a != JTI("s1", "evt-1", TypeSessionRevoked) {
		t.Fatal("a redelivery of an event on a stream has another jti")
	}
	for _, other := range []string{JTI("s2", "evt-1", TypeSessionRevoked), JTI("s1", "evt-2", TypeSessionRevoked), JTI("s1", "evt-1", TypeCredentialCompromise)} {
		if other == a {
			t.Fatal("two SETs share a jti")
		}
	}
	if len(a) != 32 || strings.Trim(a, "0123456789abcdef") != "" {
		t.Fatalf("jti %q", a)
	}
	// The same signal on one stream, signed twice: the same jti, so the
	// receiver drops the second.
	key := mustRSAKey(t)
	st := Stream{ID: "s1", Audience: []string{"rp-1"}}
	sig := Mapper{Issuer: issuer}.Deployment(events.KeyRevokedEvent("k", "mac", "r", "b", 1, at), false)[0]
	first, _ := EncodeSET(testSigner{"set-1", key}, sig.Claims(issuer, st, at))
	second, _ := EncodeSET(testSigner{"set-1", key}, sig.Claims(issuer, st, at.Add(time.Minute)))
	c1, _ := verifyAsReceiver(t, first, &key.PublicKey, "set-1", issuer, "rp-1")
	c2, _ := verifyAsReceiver(t, second, &key.PublicKey, "set-1", issuer, "rp-1")
	if c1.ID != c2.ID || c1.ID != JTI("s1", sig.Txn, TypeKeyRevoked) {
		t.Fatalf("jti %s then %s", c1.ID, c2.ID)
	}
}

func TestEncodeSETRefusesWeakKeys(t *testing.T) {
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c := Claims{Issuer: issuer, ID: "j"}
	for name, s := range map[string]testSigner{
		"RSA 1024":  {"k", small},
		"ECDSA":     {"k", ec},
		"kid empty": {"", mustRSAKey(t)},
	} {
		if _, err := EncodeSET(s, c); err == nil {
			t.Errorf("%s: signed", name)
		}
	}
}
