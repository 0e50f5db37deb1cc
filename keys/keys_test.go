package keys

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
)

var testLife = Lifetimes{Refresh: 720 * time.Hour, Access: 5 * time.Minute, SET: 24 * time.Hour, Skew: time.Minute}

// byState returns the ids of a kind's keys in stored order, by state.
func byState(ks Keyset, kind string) map[KeyState][]string {
	out := map[KeyState][]string{}
	for _, i := range ks.Infos()[kind] {
		out[i.State] = append(out[i.State], i.ID)
	}
	return out
}

func one(t *testing.T, ids []string) string {
	t.Helper()
	if len(ids) != 1 {
		t.Fatalf("want one key, got %v", ids)
	}
	return ids[0]
}

func mustCodec(t *testing.T, ks Keyset) *domain.TokenCodec {
	t.Helper()
	c, err := ks.Codec()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestKeysetStageAndPromote(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	ks := NewKeyset(t0)
	oldMAC, oldSigning := one(t, byState(ks, "mac")[KeyCurrent]), one(t, byState(ks, "signing")[KeyCurrent])
	oldSET := one(t, byState(ks, "set")[KeyCurrent])

	staged := ks.Stage(t0.Add(time.Hour), testLife)
	if err := staged.validate(); err != nil {
		t.Fatal(err)
	}
	nextMAC, nextSigning := one(t, byState(staged, "mac")[KeyNext]), one(t, byState(staged, "signing")[KeyNext])
	nextSET := one(t, byState(staged, "set")[KeyNext])
	if one(t, byState(staged, "mac")[KeyCurrent]) != oldMAC || one(t, byState(staged, "signing")[KeyCurrent]) != oldSigning ||
		one(t, byState(staged, "set")[KeyCurrent]) != oldSET {
		t.Fatal("staging changed the current keys")
	}
	if s, _ := staged.CurrentSET(); s.ID != oldSET {
		t.Fatalf("signs SETs with %s, want %s", s.ID, oldSET)
	}
	if len(byState(ks, "mac")[KeyNext]) != 0 {
		t.Fatal("staging changed the keyset it was called on")
	}
	// Staged: nothing is minted or signed with the next keys, but what
	// they make verifies, so instances that promote first are understood.
	codec := mustCodec(t, staged)
	if tok := codec.Mint("fam", 1, [domain.SecretSize]byte{1}); tok.KeyID != oldMAC {
		t.Fatalf("minted under %s, want the current key %s", tok.KeyID, oldMAC)
	}
	next := staged.MAC[slices.IndexFunc(staged.MAC, func(k MACKey) bool { return k.ID == nextMAC })]
	nextOnly, _ := domain.NewTokenCodec(domain.MACKey{ID: next.ID, Secret: next.Secret})
	if _, err := codec.Parse(nextOnly.Mint("fam", 1, [domain.SecretSize]byte{1}).Value()); err != nil {
		t.Fatalf("a token of the staged key: %v", err)
	}
	if s, _ := staged.CurrentSigning(); s.ID != oldSigning {
		t.Fatalf("signs with %s, want %s", s.ID, oldSigning)
	}
	if again := staged.Stage(t0.Add(2*time.Hour), testLife); one(t, byState(again, "mac")[KeyNext]) != nextMAC ||
		one(t, byState(again, "signing")[KeyNext]) != nextSigning || one(t, byState(again, "set")[KeyNext]) != nextSET {
		t.Fatal("staging twice replaced the staged keys")
	}

	promotedAt := t0.Add(3 * time.Hour)
	promoted, err := staged.Promote(promotedAt, testLife)
	if err != nil {
		t.Fatal(err)
	}
	if err := promoted.validate(); err != nil {
		t.Fatal(err)
	}
	if promoted.MAC[0].ID != nextMAC || promoted.MAC[0].State != KeyCurrent ||
		promoted.Signing[0].ID != nextSigning || promoted.Signing[0].State != KeyCurrent {
		t.Fatalf("after promotion the first keys are %s and %s, want the promoted %s and %s",
			promoted.MAC[0].ID, promoted.Signing[0].ID, nextMAC, nextSigning)
	}
	retiredMAC, retiredSigning := promoted.MAC[1], promoted.Signing[1]
	if retiredMAC.ID != oldMAC || retiredMAC.State != KeyRetired || !retiredMAC.RetiredAt.Equal(promotedAt) ||
		!retiredMAC.ExpiresAt.Equal(promotedAt.Add(720*time.Hour+time.Minute)) {
		t.Fatalf("retired MAC key %+v", retiredMAC.KeyInfo)
	}
	if retiredSigning.ID != oldSigning || retiredSigning.State != KeyRetired ||
		!retiredSigning.ExpiresAt.Equal(promotedAt.Add(5*time.Minute+time.Minute)) {
		t.Fatalf("retired signing key %+v", retiredSigning.KeyInfo)
	}
	// A retired SET key stays published for SETs signed before, which
	// receivers may get long after (Lifetimes.SET).
	if cur, retiredSET := promoted.SET[0], promoted.SET[1]; cur.ID != nextSET || cur.State != KeyCurrent ||
		retiredSET.ID != oldSET || retiredSET.State != KeyRetired || !retiredSET.ExpiresAt.Equal(promotedAt.Add(24*time.Hour+time.Minute)) {
		t.Fatalf("SET keys after promotion: %+v, %+v", cur.KeyInfo, retiredSET.KeyInfo)
	}
	if s, err := promoted.CurrentSET(); err != nil || s.ID != nextSET {
		t.Fatalf("signs SETs with %s after promotion, want %s: %v", s.ID, nextSET, err)
	}
	byDefault, err := staged.Promote(promotedAt, Lifetimes{Refresh: time.Hour})
	if err != nil || !byDefault.SET[1].ExpiresAt.Equal(promotedAt.Add(DefaultSETLifetime+DefaultClockSkew)) {
		t.Fatalf("a SET key retired with the default lifetime expires at %v: %v", byDefault.SET[1].ExpiresAt, err)
	}
	// Tokens minted before still verify; new ones carry the new key id.
	before := codec.Mint("fam", 1, [domain.SecretSize]byte{1})
	after := mustCodec(t, promoted)
	parsed, err := after.Parse(before.Value())
	if err != nil {
		t.Fatalf("a token of the retired key: %v", err)
	}
	// The codec knows when the key retired, so a family created later
	// refuses tokens under it (domain.Token.KeyRetiredBefore).
	if !parsed.KeyRetiredAt.Equal(promotedAt) {
		t.Fatalf("a token of the retired key says it retired at %v, want %v", parsed.KeyRetiredAt, promotedAt)
	}
	if tok := after.Mint("fam", 2, [domain.SecretSize]byte{2}); tok.KeyID != nextMAC {
		t.Fatalf("minted under %s after promotion, want %s", tok.KeyID, nextMAC)
	}
	if _, err := promoted.Promote(promotedAt, testLife); !errors.Is(err, ErrNothingStaged) {
		t.Fatalf("promoting with nothing staged: %v", err)
	}
}

func TestKeysetDropsExpiredRetiredKeys(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	promoted, err := NewKeyset(t0).Stage(t0, testLife).Promote(t0, testLife)
	if err != nil {
		t.Fatal(err)
	}
	macExpiry, signingExpiry := promoted.MAC[1].ExpiresAt, promoted.Signing[1].ExpiresAt
	retiredMAC := promoted.MAC[1].ID

	// Just before the signing key's expiry both retired keys stay.
	ks := promoted.Stage(signingExpiry.Add(-time.Nanosecond), testLife)
	if len(byState(ks, "mac")[KeyRetired]) != 1 || len(byState(ks, "signing")[KeyRetired]) != 1 {
		t.Fatalf("retired keys dropped early: %v", ks.summary())
	}
	// At it, the signing key goes; the MAC key, whose tokens live longer, stays.
	ks = promoted.Stage(signingExpiry, testLife)
	if len(byState(ks, "signing")[KeyRetired]) != 0 || one(t, byState(ks, "mac")[KeyRetired]) != retiredMAC {
		t.Fatalf("at the signing key's expiry: %v", ks.summary())
	}
	// Promotion is a change too.
	ks, err = ks.Promote(macExpiry, testLife)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range byState(ks, "mac")[KeyRetired] {
		if id == retiredMAC {
			t.Fatalf("expired MAC key kept: %v", ks.summary())
		}
	}
	if _, err := mustCodec(t, ks).Parse(mustCodec(t, promoted).Mint("fam", 1, [domain.SecretSize]byte{}).Value()); err != nil {
		t.Fatalf("a token of the key retired just now: %v", err)
	}
}

// oldFormat is a keyset as tokend wrote it before keys had states: the first
// key of each list is current, the others retired (without expiry).
const oldFormat = `{"mac_keys":[` +
	`{"kid":"mac-a","secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created_at":"2026-01-01T00:00:00Z"},` +
	`{"kid":"mac-b","secret":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=","created_at":"2025-01-01T00:00:00Z"}],` +
	`"signing_keys":[{"kid":"sig-a","seed":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=","created_at":"2026-01-01T00:00:00Z"}]}`

func TestKeysetReadsTheOldFormat(t *testing.T) {
	ks, err := decodeKeyset([]byte(oldFormat))
	if err != nil {
		t.Fatal(err)
	}
	if got := byState(ks, "mac"); one(t, got[KeyCurrent]) != "mac-a" || one(t, got[KeyRetired]) != "mac-b" {
		t.Fatalf("mac keys %v", got)
	}
	if s, err := ks.CurrentSigning(); err != nil || s.ID != "sig-a" {
		t.Fatalf("signing key %v: %v", s.ID, err)
	}
	codec := mustCodec(t, ks)
	if tok := codec.Mint("fam", 1, [domain.SecretSize]byte{}); tok.KeyID != "mac-a" {
		t.Fatalf("mints under %s", tok.KeyID)
	}
	old := domain.MACKey{ID: "mac-b", Secret: ks.MAC[1].Secret}
	oldCodec, _ := domain.NewTokenCodec(old)
	if _, err := codec.Parse(oldCodec.Mint("fam", 1, [domain.SecretSize]byte{}).Value()); err != nil {
		t.Fatalf("a token of the retired key: %v", err)
	}

	// The first change gives the old retired key the expiry it would have
	// had if it had retired then: never earlier than its real one.
	now := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	staged := ks.Stage(now, testLife)
	if b := staged.MAC[len(staged.MAC)-1]; b.ID != "mac-b" || !b.RetiredAt.Equal(now) || !b.ExpiresAt.Equal(now.Add(testLife.mac())) {
		t.Fatalf("old retired key after the first change: %+v", b.KeyInfo)
	}

	// And an instance still running the old version reads the new format
	// right: its first key is the current one.
	raw, _ := json.Marshal(staged)
	var legacy struct {
		MAC     []struct{ Kid string } `json:"mac_keys"`
		Signing []struct{ Kid string } `json:"signing_keys"`
	}
	if err := json.Unmarshal(raw, &legacy); err != nil || legacy.MAC[0].Kid != "mac-a" || legacy.Signing[0].Kid != "sig-a" {
		t.Fatalf("the old version would take %+v as current: %v", legacy, err)
	}
}

func TestKeysetRefusesBrokenKeysets(t *testing.T) {
	good := NewKeyset(time.Now())
	raw, _ := json.Marshal(good)
	for name, data := range map[string]string{
		"mixed formats":   strings.Replace(oldFormat, `"kid":"mac-b",`, `"kid":"mac-b","state":"retired",`, 1),
		"two current":     strings.Replace(oldFormat, `"kid":"mac-b",`, `"kid":"mac-b","state":"current",`, 1),
		"no current":      strings.ReplaceAll(string(raw), `"state":"current"`, `"state":"retired"`),
		"unknown state":   strings.Replace(string(raw), `"state":"current"`, `"state":"pending"`, 1),
		"short seed":      `{"mac_keys":[{"kid":"m","secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}],"signing_keys":[{"kid":"s","seed":"AAAA"}]}`,
		"no signing keys": `{"mac_keys":[{"kid":"m","secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}]}`,
		"repeated id":     strings.Replace(oldFormat, `"kid":"mac-b"`, `"kid":"mac-a"`, 1),
		"not json":        `[`,
	} {
		if _, err := decodeKeyset([]byte(data)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := decodeKeyset(raw); err != nil {
		t.Fatalf("a good keyset: %v", err)
	}
}

// TestKeysetInEffect: a retired key stops being in effect at its expiry,
// without a change of the keyset; the next expiry says when that happens.
func TestKeysetInEffect(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	promoted, err := NewKeyset(t0).Stage(t0, testLife).Promote(t0, testLife)
	if err != nil {
		t.Fatal(err)
	}
	macExpiry, signingExpiry, setExpiry := promoted.MAC[1].ExpiresAt, promoted.Signing[1].ExpiresAt, promoted.SET[1].ExpiresAt
	for _, c := range []struct {
		at                            time.Time
		wantMAC, wantSigning, wantSET int
		wantNext                      time.Time
	}{
		{t0, 2, 2, 2, signingExpiry},
		{signingExpiry.Add(-time.Nanosecond), 2, 2, 2, signingExpiry},
		{signingExpiry, 2, 1, 2, setExpiry},
		{setExpiry, 2, 1, 1, macExpiry},
		{macExpiry, 1, 1, 1, time.Time{}},
	} {
		ks, next := promoted.InEffect(c.at)
		if len(ks.MAC) != c.wantMAC || len(ks.Signing) != c.wantSigning || len(ks.SET) != c.wantSET || !next.Equal(c.wantNext) {
			t.Fatalf("at %v: %s, next expiry %v; want %d MAC, %d signing and %d SET keys, next %v", c.at, ks.summary(), next,
				c.wantMAC, c.wantSigning, c.wantSET, c.wantNext)
		}
		if err := ks.validate(); err != nil {
			t.Fatalf("at %v: %v", c.at, err)
		}
	}
	if len(promoted.MAC) != 2 || len(promoted.Signing) != 2 || len(promoted.SET) != 2 {
		t.Fatal("InEffect changed the keyset it was called on")
	}
	// A retired key of the old format has no expiry yet: it stays in
	// effect until a change gives it one.
	old, err := decodeKeyset([]byte(oldFormat))
	if err != nil {
		t.Fatal(err)
	}
	if ks, next := old.InEffect(t0.Add(100 * 365 * 24 * time.Hour)); len(ks.MAC) != 2 || !next.IsZero() {
		t.Fatalf("old format: %s, next %v", ks.summary(), next)
	}
}

func TestKeysetRecordsPromotion(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	first := NewKeyset(t0)
	if !first.MAC[0].PromotedAt.Equal(t0) || !first.Signing[0].PromotedAt.Equal(t0) {
		t.Fatalf("first keys: %+v %+v", first.MAC[0].KeyInfo, first.Signing[0].KeyInfo)
	}
	staged := first.Stage(t0.Add(time.Hour), testLife)
	if !staged.MAC[1].PromotedAt.IsZero() {
		t.Fatalf("a staged key was promoted at %v", staged.MAC[1].PromotedAt)
	}
	promoted, err := staged.Promote(t0.Add(2*time.Hour), testLife)
	if err != nil {
		t.Fatal(err)
	}
	if cur, old := promoted.MAC[0], promoted.MAC[1]; !cur.PromotedAt.Equal(t0.Add(2*time.Hour)) || !old.PromotedAt.Equal(t0) {
		t.Fatalf("after promotion: current %+v, retired %+v", cur.KeyInfo, old.KeyInfo)
	}
}

// TestKeysetRevoke: a key of any state is removed at once; a current key
// is replaced in the same keyset, by the staged key if there is one.
func TestKeysetRevoke(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	promoted, err := NewKeyset(t0).Stage(t0, testLife).Promote(t0, testLife)
	if err != nil {
		t.Fatal(err)
	}
	staged := promoted.Stage(t0.Add(time.Minute), testLife) // current, next and retired of each kind
	at := t0.Add(2 * time.Minute)
	id := func(ks Keyset, kind string, s KeyState) string { return one(t, byState(ks, kind)[s]) }

	for _, c := range []struct {
		name          string
		kind          string
		state         KeyState
		wantCurrent   string // the current key afterwards; "new" for a generated one
		wantGenerated bool
	}{
		{"retired MAC key", KindMAC, KeyRetired, id(staged, KindMAC, KeyCurrent), false},
		{"staged signing key", KindSigning, KeyNext, id(staged, KindSigning, KeyCurrent), false},
		{"current MAC key, one staged", KindMAC, KeyCurrent, id(staged, KindMAC, KeyNext), false},
		{"current signing key, one staged", KindSigning, KeyCurrent, id(staged, KindSigning, KeyNext), false},
		{"current MAC key, none staged", KindMAC, KeyCurrent, "new", true},
		{"retired SET key", KindSET, KeyRetired, id(staged, KindSET, KeyCurrent), false},
		{"staged SET key", KindSET, KeyNext, id(staged, KindSET, KeyCurrent), false},
		{"current SET key, one staged", KindSET, KeyCurrent, id(staged, KindSET, KeyNext), false},
		{"current SET key, none staged", KindSET, KeyCurrent, "new", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			from := staged
			if c.wantGenerated {
				from = promoted
			}
			kid := id(from, c.kind, c.state)
			out, r, err := from.Revoke(kid, at, testLife)
			if err != nil {
				t.Fatal(err)
			}
			if err := out.validate(); err != nil {
				t.Fatal(err)
			}
			if r.Kind != c.kind || r.Revoked.ID != kid || r.Revoked.State != c.state || r.Generated != c.wantGenerated {
				t.Fatalf("revocation %+v", r)
			}
			for _, ids := range byState(out, c.kind) {
				if slices.Contains(ids, kid) {
					t.Fatalf("the revoked key is still there: %s", out.summary())
				}
			}
			cur := id(out, c.kind, KeyCurrent)
			switch {
			case c.state != KeyCurrent && r.Current != nil:
				t.Fatalf("revoking a %s key changed the current one: %+v", c.state, r.Current)
			case c.state == KeyCurrent && (r.Current == nil || r.Current.ID != cur || !r.Current.PromotedAt.Equal(at)):
				t.Fatalf("the key current in its place: %+v, in the keyset %s", r.Current, cur)
			case c.wantCurrent == "new" && (cur == kid || slices.Contains(append(byState(from, c.kind)[KeyRetired], byState(from, c.kind)[KeyNext]...), cur)):
				t.Fatalf("no new key current: %s", out.summary())
			case c.wantCurrent != "new" && cur != c.wantCurrent:
				t.Fatalf("current key %s, want %s", cur, c.wantCurrent)
			}
			for _, other := range Kinds() {
				if other != c.kind && (!slices.Equal(byState(out, other)[KeyCurrent], byState(from, other)[KeyCurrent]) ||
					!slices.Equal(byState(out, other)[KeyNext], byState(from, other)[KeyNext])) {
					t.Fatalf("another kind changed: %s", out.summary())
				}
			}
		})
	}

	// What the revoked MAC key made no longer verifies.
	kid := id(staged, KindMAC, KeyCurrent)
	token := mustCodec(t, staged).Mint("fam", 1, [domain.SecretSize]byte{})
	out, _, err := staged.Revoke(kid, at, testLife)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mustCodec(t, out).Parse(token.Value()); !errors.Is(err, domain.ErrInvalidGrant) {
		t.Fatalf("a token of the revoked key: %v", err)
	}
	// Like every change, a revocation drops the keys that expired.
	late := promoted.Signing[1].ExpiresAt
	if out, _, err := staged.Revoke(id(staged, KindMAC, KeyNext), late, testLife); err != nil || len(byState(out, KindSigning)[KeyRetired]) != 0 {
		t.Fatalf("after the signing key's expiry: %v, %v", out.summary(), err)
	}

	if _, _, err := staged.Revoke("nobody", at, testLife); !errors.Is(err, ErrUnknownKey) || domain.ErrorCode(err) != domain.ENotFound {
		t.Fatalf("an unknown kid: %v", err)
	}
	clash := staged
	clash.Signing = slices.Clone(staged.Signing)
	clash.Signing[0].ID = kid
	if _, _, err := clash.Revoke(kid, at, testLife); domain.ErrorCode(err) != domain.EInvalidRequest {
		t.Fatalf("a kid of both kinds: %v", err)
	}
	clash = staged
	clash.SET = slices.Clone(staged.SET)
	clash.SET[0].ID = id(staged, KindSigning, KeyNext)
	if _, _, err := clash.Revoke(clash.SET[0].ID, at, testLife); domain.ErrorCode(err) != domain.EInvalidRequest {
		t.Fatalf("a kid of a signing key and a SET key: %v", err)
	}
}
