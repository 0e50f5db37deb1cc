package dpop

import (
	"strings"
	"testing"
)

func TestNormalizeURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://as.example.com/oauth2/token", "https://as.example.com/oauth2/token"},
		{"HTTPS://AS.Example.COM/oauth2/token", "https://as.example.com/oauth2/token"},
		{"https://as.example.com/OAuth2/Token", "https://as.example.com/OAuth2/Token"}, // the path keeps its case
		{"https://as.example.com:443/oauth2/token", "https://as.example.com/oauth2/token"},
		{"http://as.example.com:80/t", "http://as.example.com/t"},
		{"https://as.example.com:80/t", "https://as.example.com:80/t"},
		{"http://as.example.com:443/t", "http://as.example.com:443/t"},
		{"https://as.example.com:8443/t", "https://as.example.com:8443/t"},
		{"https://as.example.com:/t", "https://as.example.com/t"},
		{"https://as.example.com", "https://as.example.com/"},
		{"https://as.example.com?x=1", "https://as.example.com/"},
		{"https://as.example.com/", "https://as.example.com/"},
		{"https://as.example.com/t/", "https://as.example.com/t/"}, // a trailing slash of a path is the path's
		{"https://as.example.com/t?grant_type=x&y", "https://as.example.com/t"},
		{"https://as.example.com/t#frag", "https://as.example.com/t"},
		{"https://as.example.com/t?#", "https://as.example.com/t"},
		{"https://as.example.com/%7Euser/%61%62c", "https://as.example.com/~user/abc"},
		{"https://as.example.com/a%2fb", "https://as.example.com/a%2Fb"},
		{"https://as.example.com/a%2Fb", "https://as.example.com/a%2Fb"},
		{"https://as.example.com/caf%c3%a9", "https://as.example.com/caf%C3%A9"},
		{"https://as.example.com/café", "https://as.example.com/caf%C3%A9"},
		{"https://as.example.com/a b", "https://as.example.com/a%20b"},
		{"https://as.example.com/a/./b/../c", "https://as.example.com/a/c"},
		{"https://as.example.com/a/%2E%2E/c", "https://as.example.com/c"},
		{"https://as.example.com/../../t", "https://as.example.com/t"},
		{"https://as.example.com/a/..", "https://as.example.com/"},
		{"https://as.example.com//t", "https://as.example.com//t"},
		{"https://[2001:DB8::1]:443/t", "https://[2001:db8::1]/t"},
		{"https://[2001:db8::1]:8443/t", "https://[2001:db8::1]:8443/t"},
		{"https://192.0.2.1/t", "https://192.0.2.1/t"},
	}
	for _, tt := range tests {
		got, err := NormalizeURL(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("NormalizeURL(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestNormalizeURLRefuses(t *testing.T) {
	for _, in := range []string{
		"", "/oauth2/token", "as.example.com/t", "//as.example.com/t", "ftp://as.example.com/t",
		"https:opaque", "https:///t", "https://user:pass@as.example.com/t", "https://user@as.example.com/t",
		"https://[fe80::1%25eth0]/t", "https://as.example.com:port/t", "https://as.example.com/%zz", "urn:ietf:rfc:9449",
	} {
		if got, err := NormalizeURL(in); err == nil {
			t.Errorf("NormalizeURL(%q) = %q, want an error", in, got)
		}
	}
}

func FuzzNormalizeURL(f *testing.F) {
	for _, s := range []string{
		"https://as.example.com/oauth2/token", "HTTP://A:80", "https://h/%7e/./../a%2f?q#f",
		"https://[::1]:443/", "https://h/a/b/../../..", "http://h/%c3%a9/café",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := NormalizeURL(in)
		if err != nil {
			return
		}
		if !strings.HasPrefix(out, "https://") && !strings.HasPrefix(out, "http://") || strings.ContainsAny(out, "?#") {
			t.Fatalf("NormalizeURL(%q) = %q", in, out)
		}
		// Normal forms are their own normal form: two URLs equal once
		// normalized stay equal however often they are.
		again, err := NormalizeURL(out)
		if err != nil || again != out {
			t.Fatalf("NormalizeURL(%q) = %q, but NormalizeURL(%q) = %q, %v", in, out, out, again, err)
		}
	})
}
