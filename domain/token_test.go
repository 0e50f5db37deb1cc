package domain

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"testing"
)

var (
	testKey    = MACKey{ID: "k1", Secret: bytes.Repeat([]byte{0x42}, 32)}
	retiredKey = MACKey{ID: "k0", Secret: bytes.Repeat([]byte{0x24}, 32)}
)

// MustCodec returns a codec minting with the first key (testKey by default)
// and verifying with all of them.
func MustCodec(tb testing.TB, keys ...MACKey) *TokenCodec {
	tb.Helper()
	if len(keys) == 0 {
		keys = []MACKey{testKey}
	}
	c, err := NewTokenCodec(keys[0], keys[1:]...)
	if err != nil {
		tb.Fatalf("NewTokenCodec: %v", err)
	}
	return c
}

// testSecret returns a deterministic secret; different seeds give different secrets.
func testSecret(seed byte) (s [SecretSize]byte) {
	for i := range s {
		s[i] = seed ^ byte(i*37)
	}
	return s
}

// MustMint mints a token with a deterministic secret and checks it verifies.
func MustMint(tb testing.TB, c *TokenCodec, familyID string, gen uint64, seed byte) Token {
	tb.Helper()
	tok := c.Mint(familyID, gen, testSecret(seed))
	got, err := c.Parse(tok.Value())
	if err != nil {
		tb.Fatalf("minted token %d of %s does not parse: %v", gen, familyID, err)
	}
	if got != tok {
		tb.Fatalf("Parse(Mint()) = %+v, want %+v", got, tok)
	}
	return tok
}

// sign appends a correct MAC under key to body, so a test can build tokens
// whose only defect is the one under test.
func sign(key MACKey, body string) string {
	mac := hmac.New(sha256.New, key.Secret)
	mac.Write([]byte(body))
	return body + "." + b64.EncodeToString(mac.Sum(nil))
}

// body returns a token without its MAC.
func body(tok Token) string {
	v := tok.Value()
	return v[:strings.LastIndexByte(v, '.')]
}

// nonCanonical respells a RawURL base64 string so that it decodes to the same
// bytes: the last character carries unused low bits when len%4 != 0.
func nonCanonical(tb testing.TB, s string) string {
	tb.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	if len(s)%4 == 0 {
		tb.Fatalf("%q has no spare bits", s)
	}
	i := strings.IndexByte(alphabet, s[len(s)-1])
	out := s[:len(s)-1] + string(alphabet[i^1])
	a, err1 := b64.DecodeString(s)
	b, err2 := b64.DecodeString(out)
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) || out == s {
		tb.Fatalf("could not respell %q: %v %v", s, err1, err2)
	}
	return out
}

func flipBit(tb testing.TB, part string, bit int) string {
	tb.Helper()
	raw, err := b64.DecodeString(part)
	if err != nil {
		tb.Fatal(err)
	}
	raw[bit/8] ^= 1 << (bit % 8)
	return b64.EncodeToString(raw)
}

func replacePart(tok string, i int, with string) string {
	parts := strings.Split(tok, ".")
	parts[i] = with
	return strings.Join(parts, ".")
}

func TestMintParseRoundTrip(t *testing.T) {
	c := MustCodec(t)
	tests := []struct {
		family string
		gen    uint64
		seed   byte
	}{
		{"fam-A", 1, 1},
		{"a", 2, 2},
		{"-_", 10, 3},
		{strings.Repeat("Zz09-_", 10) + "abcd", 42, 4}, // 64 characters
		{"fam-A", 1 << 62, 5},
		{"fam-A", 9999999999999999999, 6}, // the longest generation accepted
	}
	for _, tc := range tests {
		tok := c.Mint(tc.family, tc.gen, testSecret(tc.seed))
		want := "rt1." + tc.family + "." + strconv.FormatUint(tc.gen, 10) + ".k1." + b64.EncodeToString(func() []byte { s := testSecret(tc.seed); return s[:] }()) + "."
		if !strings.HasPrefix(tok.Value(), want) {
			t.Errorf("Mint(%s, %d) = %q, want prefix %q", tc.family, tc.gen, tok.Value(), want)
		}
		if tok.FamilyID != tc.family || tok.Generation != tc.gen || tok.KeyID != "k1" {
			t.Errorf("Mint(%s, %d) = %+v", tc.family, tc.gen, tok)
		}
		got, err := c.Parse(tok.Value())
		if err != nil {
			t.Errorf("Parse(Mint(%s, %d)): %v", tc.family, tc.gen, err)
			continue
		}
		if got != tok {
			t.Errorf("Parse(Mint(%s, %d)) = %+v, want %+v", tc.family, tc.gen, got, tok)
		}
	}
	// Minting is deterministic in the secret, and the secret matters.
	a, b := c.Mint("f", 1, testSecret(1)), c.Mint("f", 1, testSecret(1))
	if a != b {
		t.Errorf("same inputs minted %q and %q", a.Value(), b.Value())
	}
	if d := c.Mint("f", 1, testSecret(2)); d.Value() == a.Value() || d.Hash() == a.Hash() {
		t.Errorf("different secrets minted the same token")
	}
}

func TestParseRejects(t *testing.T) {
	c := MustCodec(t)
	tok := MustMint(t, c, "fam-A", 7, 1)
	v := tok.Value()
	parts := strings.Split(v, ".")
	secretPart, macPart := parts[4], parts[5]
	short := testSecret(1)
	otherKey := MACKey{ID: "k9", Secret: testKey.Secret}
	wrongSecret := MACKey{ID: "k1", Secret: bytes.Repeat([]byte{0x43}, 32)}

	tests := []struct {
		name, in string
	}{
		{"empty", ""},
		{"just dots", "....."},
		{"wrong prefix", sign(testKey, "rt2"+body(tok)[3:])},
		{"upper-case prefix", sign(testKey, "RT1"+body(tok)[3:])},
		{"no prefix", sign(testKey, body(tok)[4:]+".x")},
		{"five parts", body(tok)},
		{"seven parts", v + ".x"},
		{"seven parts signed", sign(testKey, body(tok)+".x")},
		{"empty family", sign(testKey, "rt1..7.k1."+secretPart)},
		{"family with a space", sign(testKey, "rt1.fa m.7.k1."+secretPart)},
		{"family with plus", sign(testKey, "rt1.fa+m.7.k1."+secretPart)},
		{"family of 65 characters", sign(testKey, "rt1."+strings.Repeat("f", 65)+".7.k1."+secretPart)},
		{"generation zero", sign(testKey, "rt1.fam-A.0.k1."+secretPart)},
		{"generation with leading zero", sign(testKey, "rt1.fam-A.07.k1."+secretPart)},
		{"generation 00", sign(testKey, "rt1.fam-A.00.k1."+secretPart)},
		{"empty generation", sign(testKey, "rt1.fam-A..k1."+secretPart)},
		{"negative generation", sign(testKey, "rt1.fam-A.-7.k1."+secretPart)},
		{"generation with plus", sign(testKey, "rt1.fam-A.+7.k1."+secretPart)},
		{"generation with space", sign(testKey, "rt1.fam-A. 7.k1."+secretPart)},
		{"generation with underscore", sign(testKey, "rt1.fam-A.1_0.k1."+secretPart)},
		{"hex generation", sign(testKey, "rt1.fam-A.0x7.k1."+secretPart)},
		{"generation overflowing uint64", sign(testKey, "rt1.fam-A.18446744073709551616.k1."+secretPart)},
		{"generation of 20 digits", sign(testKey, "rt1.fam-A.10000000000000000000.k1."+secretPart)},
		{"unknown key id", sign(otherKey, "rt1.fam-A.7.k9."+secretPart)},
		{"empty key id", sign(testKey, "rt1.fam-A.7.."+secretPart)},
		{"MAC under another secret", sign(wrongSecret, body(tok))},
		{"secret not base64", sign(testKey, "rt1.fam-A.7.k1."+strings.Repeat("!", 43))},
		{"secret in standard alphabet", sign(testKey, "rt1.fam-A.7.k1."+strings.Repeat("+", 43))},
		{"secret padded", sign(testKey, "rt1.fam-A.7.k1."+secretPart+"=")},
		{"secret non-canonical", sign(testKey, "rt1.fam-A.7.k1."+nonCanonical(t, secretPart))},
		{"secret of 31 bytes", sign(testKey, "rt1.fam-A.7.k1."+b64.EncodeToString(short[:31]))},
		{"secret of 33 bytes", sign(testKey, "rt1.fam-A.7.k1."+b64.EncodeToString(append(short[:], 0)))},
		{"empty secret", sign(testKey, "rt1.fam-A.7.k1.")},
		{"MAC not base64", body(tok) + "." + strings.Repeat("*", 43)},
		{"MAC padded", v + "="},
		{"MAC truncated", v[:len(v)-1]},
		{"MAC of 31 bytes", body(tok) + "." + b64.EncodeToString(func() []byte { m, _ := b64.DecodeString(macPart); return m[:31] }())},
		{"empty MAC", body(tok) + "."},
		{"flipped MAC bit 0", replacePart(v, 5, flipBit(t, macPart, 0))},
		{"flipped MAC bit 100", replacePart(v, 5, flipBit(t, macPart, 100))},
		{"flipped MAC bit 255", replacePart(v, 5, flipBit(t, macPart, 255))},
		{"flipped secret bit 0", replacePart(v, 4, flipBit(t, secretPart, 0))},
		{"flipped secret bit 255", replacePart(v, 4, flipBit(t, secretPart, 255))},
		{"changed family id", replacePart(v, 1, "fam-B")},
		{"changed generation", replacePart(v, 2, "8")},
		{"changed key id to a known one", replacePart(v, 3, "k0")},
		{"trailing newline", v + "\n"},
		{"CR LF inside the MAC", v[:len(v)-10] + "\r\n" + v[len(v)-10:]},
		{"newline inside the secret", replacePart(v, 4, secretPart[:10]+"\n"+secretPart[10:])},
		{"leading space", " " + v},
		{"oversize", v + strings.Repeat("A", 300)},
		{"1 MiB of dots", strings.Repeat(".", 1<<20)},
	}
	// A codec that also knows k0, so "changed key id to a known one" fails on the MAC.
	c2 := MustCodec(t, testKey, retiredKey)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, codec := range []*TokenCodec{c, c2} {
				got, err := codec.Parse(tc.in)
				if !errors.Is(err, ErrInvalidGrant) || ErrorCode(err) != EInvalidGrant || ErrorMessage(err) != grantDescription {
					t.Fatalf("Parse(%q) error = %v, want ErrInvalidGrant", tc.in, err)
				}
				if got != (Token{}) {
					t.Fatalf("Parse(%q) returned %+v with its error", tc.in, got)
				}
			}
		})
	}
}

// Oversized input is refused before any work proportional to its size
// (hostile input is harmless): no splitting, no decoding.
func TestParseOversizeIsCheap(t *testing.T) {
	c := MustCodec(t)
	huge := strings.Repeat(".", 1<<20)
	allocs := testing.AllocsPerRun(20, func() {
		if _, err := c.Parse(huge); err == nil {
			t.Fatal("accepted")
		}
	})
	if allocs > 0 {
		t.Errorf("Parse of 1 MiB allocates %.0f times per call, want 0", allocs)
	}
}

// One token must have exactly one spelling: everything downstream (current
// hash, parent hash, replay detection) compares hashes of the string.
func TestParseRejectsNonCanonicalMAC(t *testing.T) {
	c := MustCodec(t)
	tok := MustMint(t, c, "fam-A", 7, 1)
	respelled := replacePart(tok.Value(), 5, nonCanonical(t, strings.Split(tok.Value(), ".")[5]))
	got, err := c.Parse(respelled)
	if err == nil {
		t.Fatalf("Parse accepted a second spelling of a token (same MAC bytes, different string, different hash %s vs %s); "+
			"a rotated parent respelled this way is not recognized as the parent and escapes replay detection", got.Hash()[:8], tok.Hash()[:8])
	}
}

func TestRetiredKeyVerifies(t *testing.T) {
	oldCodec := MustCodec(t, retiredKey)
	old := MustMint(t, oldCodec, "fam-A", 3, 1)
	if old.KeyID != "k0" {
		t.Fatalf("KeyID = %q, want k0", old.KeyID)
	}
	rotated := MustCodec(t, testKey, retiredKey)
	got, err := rotated.Parse(old.Value())
	if err != nil || got != old {
		t.Fatalf("Parse with retired key = %+v, %v; want %+v", got, err, old)
	}
	if fresh := rotated.Mint("fam-A", 4, testSecret(2)); fresh.KeyID != "k1" || !strings.Contains(fresh.Value(), ".k1.") {
		t.Errorf("rotated codec minted with %q, want the current key k1", fresh.KeyID)
	}
	if _, err := MustCodec(t).Parse(old.Value()); !errors.Is(err, ErrInvalidGrant) {
		t.Errorf("codec without k0 accepted a k0 token: %v", err)
	}
	if _, err := oldCodec.Parse(rotated.Mint("fam-A", 4, testSecret(2)).Value()); !errors.Is(err, ErrInvalidGrant) {
		t.Errorf("codec without k1 accepted a k1 token: %v", err)
	}
}

func TestNewTokenCodec(t *testing.T) {
	secret := bytes.Repeat([]byte{1}, 32)
	tests := []struct {
		name    string
		current MACKey
		retired []MACKey
		ok      bool
	}{
		{"one key", MACKey{ID: "k1", Secret: secret}, nil, true},
		{"with retired", MACKey{ID: "k1", Secret: secret}, []MACKey{{ID: "k0", Secret: secret}}, true},
		{"long secret", MACKey{ID: "k1", Secret: bytes.Repeat([]byte{1}, 64)}, nil, true},
		{"short secret", MACKey{ID: "k1", Secret: secret[:31]}, nil, false},
		{"no secret", MACKey{ID: "k1"}, nil, false},
		{"no id", MACKey{Secret: secret}, nil, false},
		{"id with a dot", MACKey{ID: "k.1", Secret: secret}, nil, false},
		{"bad retired key", MACKey{ID: "k1", Secret: secret}, []MACKey{{ID: "k0", Secret: secret[:8]}}, false},
		{"retired key without id", MACKey{ID: "k1", Secret: secret}, []MACKey{{Secret: secret}}, false},
	}
	for _, tc := range tests {
		c, err := NewTokenCodec(tc.current, tc.retired...)
		if (err == nil) != tc.ok || (c != nil) != tc.ok {
			t.Errorf("%s: NewTokenCodec = %v, %v; want ok=%v", tc.name, c, err, tc.ok)
		}
	}
}

func TestHash(t *testing.T) {
	// SHA-256("abc") from FIPS 180-2.
	if got := HashToken("abc"); got != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Errorf("HashToken(abc) = %s", got)
	}
	c := MustCodec(t)
	tok := MustMint(t, c, "fam-A", 1, 1)
	sum := sha256.Sum256([]byte(tok.Value()))
	if got := tok.Hash(); got != hex.EncodeToString(sum[:]) || got != HashToken(tok.Value()) {
		t.Errorf("Hash() = %s, want hex SHA-256 of the value", got)
	}
	if strings.Contains(tok.Hash(), tok.Value()) || len(tok.Hash()) != 64 || strings.ToLower(tok.Hash()) != tok.Hash() {
		t.Errorf("Hash() = %q is not 64 lower-case hex digits", tok.Hash())
	}
	if MustMint(t, c, "fam-A", 1, 2).Hash() == tok.Hash() {
		t.Errorf("different tokens hash alike")
	}
}

func TestSameHash(t *testing.T) {
	h1, h2 := HashToken("a"), HashToken("b")
	tests := []struct {
		a, b string
		want bool
	}{
		{h1, h1, true},
		{h1, strings.Clone(h1), true},
		{h1, h2, false},
		{h1, h1[:63], false},
		{h1, "", false},
		{"", h1, false},
		{"", "", true},
		{h1, strings.ToUpper(h1), false},
	}
	for _, tc := range tests {
		if got := SameHash(tc.a, tc.b); got != tc.want {
			t.Errorf("SameHash(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestValidIDAndNewID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"a", true},
		{"Az09-_", true},
		{strings.Repeat("x", 64), true},
		{strings.Repeat("x", 65), false},
		{"", false},
		{"a.b", false},
		{"a b", false},
		{"a+b", false},
		{"a/b", false},
		{"a=", false},
		{"a*", false},
		{"a>", false},
		{"é", false},
		{"a\x00", false},
	}
	for _, tc := range tests {
		if got := ValidID(tc.id); got != tc.want {
			t.Errorf("ValidID(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
	for n := 1; n <= 48; n++ {
		if id := NewID(bytes.Repeat([]byte{0xfb}, n)); !ValidID(id) {
			t.Errorf("NewID of %d bytes = %q is not a valid id", n, id)
		}
	}
	if NewID([]byte{1, 2, 3}) == NewID([]byte{1, 2, 4}) {
		t.Errorf("NewID ignores its input")
	}
}

// TestMintChild: a child is the parent's next generation under the current
// key, the same every time it is derived from the same parent, and
// different for any other parent, including the parent's own siblings and
// a parent of another family with the same generation.
func TestMintChild(t *testing.T) {
	c := MustCodec(t)
	parent := MustMint(t, c, "fam-A", 2, 1)
	child, err := c.MintChild(parent)
	if err != nil {
		t.Fatal(err)
	}
	if child.FamilyID != "fam-A" || child.Generation != 3 || child.KeyID != testKey.ID {
		t.Fatalf("child %+v: want fam-A, generation 3, key %s", child, testKey.ID)
	}
	if parsed, err := c.Parse(child.Value()); err != nil || parsed != child {
		t.Fatalf("the child does not verify: %+v, %v", parsed, err)
	}
	again, _ := c.MintChild(parent)
	if again != child {
		t.Fatal("deriving the child twice gave two tokens")
	}
	seen := map[string]string{child.Value(): "the child"}
	for name, other := range map[string]Token{
		"sibling parent":                  MustMint(t, c, "fam-A", 2, 9),
		"same secret, another family":     MustMint(t, c, "fam-B", 2, 1),
		"same secret, another generation": MustMint(t, c, "fam-A", 5, 1),
		"the child as parent":             child,
	} {
		got, err := c.MintChild(other)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if prev, dup := seen[secretOf(got)]; dup {
			t.Errorf("%s: same child secret as %s", name, prev)
		}
		seen[secretOf(got)] = name
	}
	// Another deployment's key derives another child from the same parent.
	otherDeployment := MustCodec(t, MACKey{ID: testKey.ID, Secret: bytes.Repeat([]byte{0x43}, 32)})
	if theirs, err := otherDeployment.MintChild(parent); err != nil || secretOf(theirs) == secretOf(child) {
		t.Errorf("a different key derived the same child secret (%v)", err)
	}
	// A parent the codec cannot verify has no child.
	for name, p := range map[string]Token{"zero token": {}, "unknown key": MustMint(t, MustCodec(t, retiredKey), "fam-A", 2, 1)} {
		if _, err := c.MintChild(p); !errors.Is(err, ErrInvalidGrant) {
			t.Errorf("%s: MintChild error %v, want ErrInvalidGrant", name, err)
		}
	}
}

// secretOf returns a token's secret part.
func secretOf(t Token) string { return strings.Split(t.Value(), ".")[4] }

// TestChildOf: the child is found again from the parent and the child's
// hash, also after the key it was minted under has been retired, and never
// for a wrong parent or hash.
func TestChildOf(t *testing.T) {
	before := MustCodec(t, retiredKey) // retiredKey is current here
	parent := MustMint(t, before, "fam-A", 2, 1)
	child, err := before.MintChild(parent)
	if err != nil {
		t.Fatal(err)
	}
	after := MustCodec(t, testKey, retiredKey) // the key has rotated since
	for name, c := range map[string]*TokenCodec{"same keys": before, "after a key rotation": after} {
		if got, ok := c.ChildOf(parent, child.Hash()); !ok || got != child {
			t.Errorf("%s: ChildOf = %+v, %v; want the child", name, got, ok)
		}
	}
	if fresh, _ := after.MintChild(parent); fresh.KeyID != testKey.ID {
		t.Errorf("a child minted after the rotation is under key %s, want the current %s", fresh.KeyID, testKey.ID)
	}
	for name, tc := range map[string]struct {
		c        *TokenCodec
		parent   Token
		wantHash string
	}{
		"sibling parent":      {after, MustMint(t, before, "fam-A", 2, 9), child.Hash()},
		"the child as parent": {after, child, child.Hash()},
		"zero parent":         {after, Token{}, child.Hash()},
		"parent's hash":       {after, parent, parent.Hash()},
		"empty hash":          {after, parent, ""},
		"key no longer held":  {MustCodec(t, testKey), parent, child.Hash()},
		"another deployment":  {MustCodec(t, MACKey{ID: retiredKey.ID, Secret: bytes.Repeat([]byte{7}, 32)}), parent, child.Hash()},
	} {
		if got, ok := tc.c.ChildOf(tc.parent, tc.wantHash); ok || got != (Token{}) {
			t.Errorf("%s: ChildOf = %+v, %v; want nothing", name, got, ok)
		}
	}
}

func FuzzParseToken(f *testing.F) {
	c := MustCodec(f, testKey, retiredKey)
	old := MustCodec(f, retiredKey)
	tok := c.Mint("fam-A", 7, testSecret(1))
	v := tok.Value()
	for _, s := range []string{
		v,
		old.Mint("fam-B", 1, testSecret(2)).Value(),
		c.Mint(strings.Repeat("Zz09-_", 10)+"abcd", 9999999999999999999, testSecret(3)).Value(),
		c.Mint("x", 1, [SecretSize]byte{}).Value(),
		"",
		".....",
		"rt1.fam-A.1.k1..",
		"rt1.fam-A.01.k1." + strings.Split(v, ".")[4] + "." + strings.Split(v, ".")[5],
		"rt1.fam-A.0.k1.AAAA.AAAA",
		replacePart(v, 1, "fam-B"),
		replacePart(v, 2, "8"),
		replacePart(v, 3, "k9"),
		v + "=",
		v[:len(v)-1],
		"rt2" + v[3:],
		strings.Repeat("A", 300),
		"rt1.\xff.1.k1.a.b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := c.Parse(s)
		if err != nil {
			if err != ErrInvalidGrant || tok != (Token{}) {
				t.Fatalf("Parse(%q) = %+v, %v; want zero Token and ErrInvalidGrant", s, tok, err)
			}
			return
		}
		parts := strings.Split(s, ".")
		if len(parts) != 6 || parts[0] != "rt1" || tok.FamilyID != parts[1] || strconv.FormatUint(tok.Generation, 10) != parts[2] ||
			tok.KeyID != parts[3] || tok.Value() != s {
			t.Fatalf("Parse(%q) = %+v does not match the string's parts", s, tok)
		}
		if !ValidID(tok.FamilyID) || tok.Generation == 0 {
			t.Fatalf("Parse(%q) accepted family %q generation %d", s, tok.FamilyID, tok.Generation)
		}
		raw, err := b64.DecodeString(parts[4])
		if err != nil || len(raw) != SecretSize {
			t.Fatalf("Parse(%q) accepted a secret that is not %d bytes of base64", s, SecretSize)
		}
		minter := c
		if tok.KeyID == retiredKey.ID {
			minter = old
		}
		again := minter.Mint(tok.FamilyID, tok.Generation, [SecretSize]byte(raw))
		if again != tok {
			t.Fatalf("Parse accepted %q but re-minting its parts gives %q: one token, two spellings", s, again.Value())
		}
		if back, err := c.Parse(tok.Value()); err != nil || back != tok {
			t.Fatalf("re-parse of %q = %+v, %v", s, back, err)
		}
	})
}
