package domain

import (
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func scopes(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "s" + strconv.Itoa(i)
	}
	return out
}

func TestParseScope(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // nil: invalid_request
	}{
		{"empty string is the empty set", "", []string{}},
		{"only spaces", "   ", []string{}},
		{"one", "openid", []string{"openid"}},
		{"several in order", "openid profile api:read", []string{"openid", "profile", "api:read"}},
		{"repeats dropped, first-seen order kept", "b a b a c", []string{"b", "a", "c"}},
		{"extra spaces", "  a   b  ", []string{"a", "b"}},
		{"case matters", "a A", []string{"a", "A"}},
		{"every allowed punctuation", "!#$%&'()*+,-./:;<=>?@[]^_`{|}~", []string{"!#$%&'()*+,-./:;<=>?@[]^_`{|}~"}},
		{"128 bytes", strings.Repeat("x", 128), []string{strings.Repeat("x", 128)}},
		{"64 scopes", strings.Join(scopes(64), " "), scopes(64)},
		{"64 scopes with repeats", strings.Join(append(scopes(64), scopes(64)...), " "), scopes(64)},
		{"129 bytes", strings.Repeat("x", 129), nil},
		{"65 scopes", strings.Join(scopes(65), " "), nil},
		{"double quote", `api"read`, nil},
		{"backslash", `api\read`, nil},
		{"tab separator", "a\tb", nil},
		{"newline separator", "a\nb", nil},
		{"NUL", "a\x00", nil},
		{"DEL", "a\x7f", nil},
		{"non-ASCII", "café", nil},
		{"non-breaking space", "a\u00a0b", nil},
		{"invalid UTF-8", "a\xff", nil},
		{"invalid after valid ones", "openid profile \"x", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseScope(tc.in)
			if tc.want == nil {
				if ErrorCode(err) != EInvalidRequest || got != nil {
					t.Fatalf("ParseScope(%q) = %q, %v; want invalid_request", tc.in, got, err)
				}
				if msg := ErrorMessage(err); !utf8.ValidString(msg) || len(msg) > 200 {
					t.Errorf("error message %q is not short printable text", msg)
				}
				return
			}
			if err != nil || len(got) != len(tc.want) || (len(got) > 0 && !reflect.DeepEqual(got, tc.want)) {
				t.Fatalf("ParseScope(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
			if again, err := ParseScope(ScopeString(got)); err != nil || len(again) != len(got) || (len(got) > 0 && !reflect.DeepEqual(again, got)) {
				t.Errorf("ParseScope(ScopeString(%q)) = %q, %v", got, again, err)
			}
		})
	}
}

func TestScopeString(t *testing.T) {
	if got := ScopeString([]string{"openid", "api:read"}); got != "openid api:read" {
		t.Errorf("ScopeString = %q", got)
	}
	if got := ScopeString(nil); got != "" {
		t.Errorf("ScopeString(nil) = %q", got)
	}
}

func TestSubset(t *testing.T) {
	tests := []struct {
		req, grant []string
		want       bool
	}{
		{nil, nil, true},
		{nil, []string{"a"}, true},
		{[]string{}, []string{"a"}, true},
		{[]string{"a"}, nil, false},
		{[]string{"a"}, []string{"a"}, true},
		{[]string{"b", "a"}, []string{"a", "b", "c"}, true},
		{[]string{"a", "d"}, []string{"a", "b", "c"}, false},
		{[]string{"a", "a"}, []string{"a"}, true},
		{[]string{"A"}, []string{"a"}, false},
		{[]string{"api"}, []string{"api:read"}, false},
		{[]string{"api:read"}, []string{"api"}, false},
		{[]string{""}, []string{"a"}, false},
	}
	for _, tc := range tests {
		if got := Subset(tc.req, tc.grant); got != tc.want {
			t.Errorf("Subset(%q, %q) = %v, want %v", tc.req, tc.grant, got, tc.want)
		}
	}
}

func TestValidateAudiences(t *testing.T) {
	many := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = "https://r" + strconv.Itoa(i) + ".example.com"
		}
		return out
	}
	tests := []struct {
		name string
		in   []string
		want []string // nil: invalid_request
	}{
		{"none", nil, []string{}},
		{"empty list", []string{}, []string{}},
		{"two", []string{"https://api.example.com", "https://billing.example.com"}, []string{"https://api.example.com", "https://billing.example.com"}},
		{"repeats dropped, order kept", []string{"https://b", "https://a", "https://b"}, []string{"https://b", "https://a"}},
		{"URN", []string{"urn:example:resource"}, []string{"urn:example:resource"}},
		{"512 bytes", []string{strings.Repeat("a", 512)}, []string{strings.Repeat("a", 512)}},
		{"16 audiences", many(16), many(16)},
		{"17 audiences", many(17), nil},
		{"empty audience", []string{"https://a", ""}, nil},
		{"513 bytes", []string{strings.Repeat("a", 513)}, nil},
		{"space", []string{"https://a b"}, nil},
		{"tab", []string{"https://a\tb"}, nil},
		{"newline", []string{"https://a\n"}, nil},
		{"NUL", []string{"https://a\x00"}, nil},
		{"DEL", []string{"https://a\x7f"}, nil},
		{"invalid UTF-8", []string{"https://a\xff"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ValidateAudiences(tc.in)
			if tc.want == nil {
				if ErrorCode(err) != EInvalidRequest || got != nil {
					t.Fatalf("ValidateAudiences(%q) = %q, %v; want invalid_request", tc.in, got, err)
				}
				if msg := ErrorMessage(err); !utf8.ValidString(msg) || len(msg) > 200 {
					t.Errorf("error message %q is not short printable text", msg)
				}
				return
			}
			if err != nil || len(got) != len(tc.want) || (len(got) > 0 && !reflect.DeepEqual(got, tc.want)) {
				t.Fatalf("ValidateAudiences(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"user-42", true},
		{"a", true},
		{"user 42", true},
		{"Jürgen", true},
		{"日本語", true},
		{"emoji 🙂", true},
		{strings.Repeat("x", 256), true},
		{strings.Repeat("é", 128), true}, // 256 bytes
		{"", false},
		{strings.Repeat("x", 257), false},
		{strings.Repeat("é", 128) + "x", false},
		{"a\x00", false},
		{"a\n", false},
		{"a\r", false},
		{"\ta", false},
		{"a\x1b", false},
		{"a\x7f", false},
		{"a\u0085", false}, // C1 control
		{"a\u200b", false}, // zero-width space
		{"a\u2028", false}, // line separator
		{"a\u00a0", false}, // non-breaking space
		{"a\xff", false},
		{"\xc3", false},
	}
	for _, tc := range tests {
		err := ValidateName("subject", tc.in)
		if tc.ok && err != nil {
			t.Errorf("ValidateName(%q) = %v, want ok", tc.in, err)
		}
		if !tc.ok {
			if ErrorCode(err) != EInvalidRequest {
				t.Errorf("ValidateName(%q) = %v, want invalid_request", tc.in, err)
			} else if msg := ErrorMessage(err); !strings.Contains(msg, "subject") || (tc.in != "" && strings.Contains(msg, tc.in)) {
				t.Errorf("ValidateName(%q) message %q should name the field and not echo the input", tc.in, msg)
			}
		}
	}
	if err := ValidateName("client_id", ""); !strings.Contains(ErrorMessage(err), "client_id") {
		t.Errorf("message %q does not name client_id", ErrorMessage(err))
	}
}

func TestValidateContext(t *testing.T) {
	entries := func(n int) Context {
		c := Context{}
		for i := range n {
			c["k"+strconv.Itoa(i)] = "v"
		}
		return c
	}
	tests := []struct {
		name string
		in   Context
		ok   bool
	}{
		{"nil", nil, true},
		{"empty", Context{}, true},
		{"typical", Context{"ip": "203.0.113.7", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)"}, true},
		{"16 entries", entries(16), true},
		{"1 KiB in all", Context{"ua": strings.Repeat("v", 510), "ref": strings.Repeat("r", 509)}, true},
		{"over 1 KiB in all", Context{"ua": strings.Repeat("v", 510), "ref": strings.Repeat("r", 510)}, false},
		{"16 values of 512 bytes", func() Context {
			c := entries(16)
			for k := range c {
				c[k] = strings.Repeat("v", 512)
			}
			return c
		}(), false},
		{"empty value", Context{"ip": ""}, true},
		{"64-byte key", Context{strings.Repeat("k", 64): "v"}, true},
		{"512-byte value", Context{"ua": strings.Repeat("v", 512)}, true},
		{"unicode", Context{"ort": "Zürich"}, true},
		{"17 entries", entries(17), false},
		{"empty key", Context{"": "v"}, false},
		{"65-byte key", Context{strings.Repeat("k", 65): "v"}, false},
		{"513-byte value", Context{"ua": strings.Repeat("v", 513)}, false},
		{"key with newline", Context{"a\nb": "v"}, false},
		{"key with NUL", Context{"a\x00": "v"}, false},
		{"key not UTF-8", Context{"a\xff": "v"}, false},
		{"value with newline", Context{"ua": "a\nb"}, false},
		{"value with escape", Context{"ua": "\x1b[31m"}, false},
		{"value not UTF-8", Context{"ua": "\xc3"}, false},
		{"one bad among good", Context{"ip": "203.0.113.7", "ua": "ok", "x": "\x00"}, false},
	}
	for _, tc := range tests {
		err := ValidateContext(tc.in)
		if tc.ok && err != nil {
			t.Errorf("%s: ValidateContext = %v, want ok", tc.name, err)
		}
		if !tc.ok {
			if ErrorCode(err) != EInvalidRequest {
				t.Errorf("%s: ValidateContext = %v, want invalid_request", tc.name, err)
			} else if msg := ErrorMessage(err); !utf8.ValidString(msg) || len(msg) > 200 {
				t.Errorf("%s: error message %q is not short printable text", tc.name, msg)
			}
		}
	}
}

func FuzzParseScope(f *testing.F) {
	for _, s := range []string{"", " ", "openid profile", "a a b", "  x  y ", "a\tb", `a"b`, `a\b`, "café", "!~",
		strings.Join(scopes(65), " "), strings.Repeat("x", 129), strings.Repeat("a ", 70), "a\xff b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseScope(s)

		// An independent model of RFC 6749 section 3.3 plus the limits.
		var want []string
		seen, valid := map[string]bool{}, true
		for _, tok := range strings.Split(s, " ") {
			if tok == "" {
				continue
			}
			if len(tok) > MaxScopeBytes {
				valid = false
			}
			for i := 0; i < len(tok); i++ {
				if c := tok[i]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
					valid = false
				}
			}
			if !seen[tok] {
				seen[tok] = true
				want = append(want, tok)
			}
		}
		if len(want) > MaxScopes {
			valid = false
		}

		if !valid {
			if ErrorCode(err) != EInvalidRequest || got != nil {
				t.Fatalf("ParseScope(%q) = %q, %v; want invalid_request", s, got, err)
			}
			if !utf8.ValidString(ErrorMessage(err)) {
				t.Fatalf("ParseScope(%q) error message is not UTF-8: %q", s, ErrorMessage(err))
			}
			return
		}
		if err != nil || len(got) != len(want) || (len(want) > 0 && !reflect.DeepEqual(got, want)) {
			t.Fatalf("ParseScope(%q) = %q, %v; want %q", s, got, err, want)
		}
		again, err := ParseScope(ScopeString(got))
		if err != nil || len(again) != len(got) || (len(got) > 0 && !reflect.DeepEqual(again, got)) {
			t.Fatalf("ParseScope(ScopeString(%q)) = %q, %v", got, again, err)
		}
		if !Subset(got, got) || !Subset(got, want) {
			t.Fatalf("Subset disagrees with itself on %q", got)
		}
	})
}
