package clientaddr

import (
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// testProxies are the trusted networks of the tests: a private range, the
// IPv4 loopback, a unique-local IPv6 range and the IPv6 loopback.
const testProxies = "10.0.0.0/8, 127.0.0.0/8, fd00::/8, ::1"

func mustPolicy(tb testing.TB, proxies string, header Header) Policy {
	tb.Helper()
	p, err := ParseProxies(proxies)
	if err != nil {
		tb.Fatal(err)
	}
	return Policy{Proxies: p, Header: header}
}

func TestParseProxies(t *testing.T) {
	for in, want := range map[string][]string{
		"":                        nil,
		"  ":                      nil,
		"10.0.0.0/8":              {"10.0.0.0/8"},
		"10.1.2.3/8, fd00::/8":    {"10.0.0.0/8", "fd00::/8"},
		"192.0.2.1,2001:db8::1":   {"192.0.2.1/32", "2001:db8::1/128"},
		"::ffff:10.0.0.0/104":     {"10.0.0.0/8"},
		" 127.0.0.0/8 , ::1/128 ": {"127.0.0.0/8", "::1/128"},
	} {
		got, err := ParseProxies(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		var s []string
		for _, p := range got {
			s = append(s, p.String())
		}
		if !slices.Equal(s, want) {
			t.Errorf("%q: %v, want %v", in, s, want)
		}
	}
	for _, in := range []string{"10.0.0.0/33", "10.0.0.0/8,", "example.com", "10.0.0.0/8;fd00::/8", "fe80::1%eth0", "*"} {
		if _, err := ParseProxies(in); err == nil {
			t.Errorf("%q: accepted", in)
		}
	}
}

func TestParseHeader(t *testing.T) {
	for in, want := range map[string]Header{"x-forwarded-for": XForwardedFor, "X-Forwarded-For": XForwardedFor, "Forwarded": Forwarded} {
		if got, err := ParseHeader(in); got != want || err != nil {
			t.Errorf("%q: %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "x-real-ip", "forwarded-for"} {
		if _, err := ParseHeader(in); err == nil {
			t.Errorf("%q: accepted", in)
		}
	}
}

type resolveCase struct {
	name   string
	peer   string
	header []string // lines of the policy's header
	want   Addr
}

func runResolve(t *testing.T, p Policy, cases []resolveCase) {
	t.Helper()
	name := "X-Forwarded-For"
	if p.Header == Forwarded {
		name = "Forwarded"
	}
	for _, c := range cases {
		h := http.Header{}
		for _, line := range c.header {
			h.Add(name, line)
		}
		if got := p.Resolve(c.peer, h); got != c.want {
			t.Errorf("%s: peer %s, %s %q: got %+v, want %+v", c.name, c.peer, name, c.header, got, c.want)
		}
	}
}

// TestResolvePeer: without a trusted proxy the peer is the client, IPv6
// included (the address was once cut at its first colon), and forwarding
// headers are ignored.
func TestResolvePeer(t *testing.T) {
	runResolve(t, Policy{}, []resolveCase{
		{"IPv4", "192.0.2.1:5555", nil, Addr{Client: "192.0.2.1"}},
		{"IPv6 loopback", "[::1]:5555", nil, Addr{Client: "::1"}},
		{"IPv6", "[2001:db8::7]:443", nil, Addr{Client: "2001:db8::7"}},
		{"IPv6 with a zone", "[fe80::1%eth0]:443", nil, Addr{Client: "fe80::1%eth0"}},
		{"IPv4-mapped IPv6", "[::ffff:192.0.2.1]:80", nil, Addr{Client: "192.0.2.1"}},
		{"header ignored", "192.0.2.1:5555", []string{"203.0.113.9"}, Addr{Client: "192.0.2.1"}},
		{"header of a loopback peer ignored", "127.0.0.1:5555", []string{"203.0.113.9"}, Addr{Client: "127.0.0.1"}},
		{"no port", "192.0.2.1", nil, Addr{Client: "192.0.2.1"}},
		{"not an address", "pipe:1", nil, Addr{Client: "pipe"}},
		{"empty", "", nil, Addr{}},
	})
}

func TestResolveXForwardedFor(t *testing.T) {
	p := mustPolicy(t, testProxies, XForwardedFor)
	runResolve(t, p, []resolveCase{
		{"one hop", "127.0.0.1:5555", []string{"203.0.113.9"}, Addr{Client: "203.0.113.9", Proxy: "127.0.0.1"}},
		{"untrusted peer", "192.0.2.1:5555", []string{"203.0.113.9"}, Addr{Client: "192.0.2.1"}},
		{"no header", "10.1.1.1:5555", nil, Addr{Client: "10.1.1.1"}},
		{"empty header", "10.1.1.1:5555", []string{" "}, Addr{Client: "10.1.1.1"}},
		{"IPv6 proxy and client", "[::1]:5555", []string{"2001:db8::7"}, Addr{Client: "2001:db8::7", Proxy: "::1"}},
		{"chain of trusted proxies", "10.0.0.2:80", []string{"203.0.113.9, 10.0.0.1, fd00::3"},
			Addr{Client: "203.0.113.9", Proxy: "10.0.0.2"}},
		{"spoofed entries left of the client", "10.0.0.2:80", []string{"198.51.100.66, 10.9.9.9, 203.0.113.9, 10.0.0.1"},
			Addr{Client: "203.0.113.9", Proxy: "10.0.0.2"}},
		{"garbage left of the client", "10.0.0.2:80", []string{"<script>, not-an-ip,, 203.0.113.9"},
			Addr{Client: "203.0.113.9", Proxy: "10.0.0.2"}},
		{"lines", "10.0.0.2:80", []string{"198.51.100.66", "203.0.113.9", "10.0.0.1"}, Addr{Client: "203.0.113.9", Proxy: "10.0.0.2"}},
		{"ports", "10.0.0.2:80", []string{"[2001:db8::7]:4711, 10.0.0.1:80"}, Addr{Client: "2001:db8::7", Proxy: "10.0.0.2"}},
		{"IPv4 with a port", "10.0.0.2:80", []string{"203.0.113.9:4711"}, Addr{Client: "203.0.113.9", Proxy: "10.0.0.2"}},
		{"bracketed IPv6", "10.0.0.2:80", []string{"[2001:db8::7]"}, Addr{Client: "2001:db8::7", Proxy: "10.0.0.2"}},
		{"IPv4-mapped", "10.0.0.2:80", []string{"::ffff:203.0.113.9"}, Addr{Client: "203.0.113.9", Proxy: "10.0.0.2"}},
		{"mapped trusted proxy", "[::ffff:10.0.0.2]:80", []string{"203.0.113.9, ::ffff:10.0.0.1"}, Addr{Client: "203.0.113.9", Proxy: "10.0.0.2"}},
		{"zoned peer", "[fd00::1%eth0]:80", []string{"203.0.113.9"}, Addr{Client: "203.0.113.9", Proxy: "fd00::1%eth0"}},
		{"every hop trusted", "10.0.0.2:80", []string{"10.0.0.7, 10.0.0.1"}, Addr{Client: "10.0.0.7", Proxy: "10.0.0.2"}},
		{"malformed", "10.0.0.2:80", []string{"203.0.113.9, bogus"}, Addr{Client: "10.0.0.2"}},
		{"malformed port", "10.0.0.2:80", []string{"203.0.113.9:http"}, Addr{Client: "10.0.0.2"}},
		{"unbracketed IPv6 with port", "10.0.0.2:80", []string{"2001:db8::7]:80"}, Addr{Client: "10.0.0.2"}},
		{"empty entry", "10.0.0.2:80", []string{"203.0.113.9,"}, Addr{Client: "10.0.0.2"}},
		{"too long", "10.0.0.2:80", []string{"::" + strings.Repeat("0", 200) + "1"}, Addr{Client: "10.0.0.2"}},
	})
	h := http.Header{"Forwarded": {"for=203.0.113.9"}}
	if got := p.Resolve("10.0.0.2:80", h); got != (Addr{Client: "10.0.0.2"}) {
		t.Errorf("Forwarded read by an X-Forwarded-For policy: %+v", got)
	}
}

func TestResolveForwarded(t *testing.T) {
	p := mustPolicy(t, testProxies, Forwarded)
	runResolve(t, p, []resolveCase{
		{"one hop", "127.0.0.1:5555", []string{"for=203.0.113.9"}, Addr{Client: "203.0.113.9", Proxy: "127.0.0.1"}},
		{"untrusted peer", "192.0.2.1:5555", []string{"for=203.0.113.9"}, Addr{Client: "192.0.2.1"}},
		{"RFC 7239 examples", "10.0.0.2:80", []string{`for="_gazonk"`}, Addr{Client: "_gazonk", Proxy: "10.0.0.2"}},
		{"quoted IPv6 with port", "10.0.0.2:80", []string{`For="[2001:db8:cafe::17]:4711"`},
			Addr{Client: "2001:db8:cafe::17", Proxy: "10.0.0.2"}},
		{"quoted IPv6", "10.0.0.2:80", []string{`for="[2001:db8::1]"`}, Addr{Client: "2001:db8::1", Proxy: "10.0.0.2"}},
		{"parameters", "10.0.0.2:80", []string{"for=192.0.2.60;proto=http;by=203.0.113.43"}, Addr{Client: "192.0.2.60", Proxy: "10.0.0.2"}},
		{"chain", "10.0.0.2:80", []string{`for=192.0.2.43, for="[fd00::17]";by=10.0.0.1`}, Addr{Client: "192.0.2.43", Proxy: "10.0.0.2"}},
		{"spoofed element", "10.0.0.2:80", []string{"for=198.51.100.66, for=203.0.113.9, for=10.0.0.1"},
			Addr{Client: "203.0.113.9", Proxy: "10.0.0.2"}},
		{"garbage in the client's line", "10.0.0.2:80", []string{`for=<script>, "`, "for=203.0.113.9"},
			Addr{Client: "203.0.113.9", Proxy: "10.0.0.2"}},
		{"unknown", "10.0.0.2:80", []string{"for=unknown, for=10.0.0.1"}, Addr{Client: "unknown", Proxy: "10.0.0.2"}},
		{"UNKNOWN", "10.0.0.2:80", []string{"for=UNKNOWN"}, Addr{Client: "unknown", Proxy: "10.0.0.2"}},
		{"obfuscated port", "10.0.0.2:80", []string{`for="192.0.2.43:_p1"`}, Addr{Client: "192.0.2.43", Proxy: "10.0.0.2"}},
		{"no for", "10.0.0.2:80", []string{"for=203.0.113.9, proto=https;by=10.0.0.1"}, Addr{Client: "unknown", Proxy: "10.0.0.2"}},
		{"empty elements", "10.0.0.2:80", []string{" , for=203.0.113.9 ,, "}, Addr{Client: "203.0.113.9", Proxy: "10.0.0.2"}},
		{"quoted-pair", "10.0.0.2:80", []string{`for="\_x\.y"`}, Addr{Client: "_x.y", Proxy: "10.0.0.2"}},
		{"comma in a quoted string", "10.0.0.2:80", []string{`for=203.0.113.9;host="a,b"`}, Addr{Client: "203.0.113.9", Proxy: "10.0.0.2"}},
		{"every hop trusted", "10.0.0.2:80", []string{"for=10.0.0.7, for=10.0.0.1"}, Addr{Client: "10.0.0.7", Proxy: "10.0.0.2"}},
		{"unquoted IPv6", "10.0.0.2:80", []string{"for=[2001:db8::1]"}, Addr{Client: "10.0.0.2"}},
		{"bare IPv6", "10.0.0.2:80", []string{`for="2001:db8::1"`}, Addr{Client: "10.0.0.2"}},
		{"unterminated quote", "10.0.0.2:80", []string{`for="203.0.113.9`}, Addr{Client: "10.0.0.2"}},
		{"for twice", "10.0.0.2:80", []string{"for=203.0.113.9;for=203.0.113.10"}, Addr{Client: "10.0.0.2"}},
		{"no value", "10.0.0.2:80", []string{"for="}, Addr{Client: "10.0.0.2"}},
		{"space around =", "10.0.0.2:80", []string{"for = 203.0.113.9"}, Addr{Client: "10.0.0.2"}},
		{"bad obfuscated node", "10.0.0.2:80", []string{"for=_"}, Addr{Client: "10.0.0.2"}},
		{"bad port", "10.0.0.2:80", []string{`for="203.0.113.9:123456"`}, Addr{Client: "10.0.0.2"}},
		{"IPv6 zone", "10.0.0.2:80", []string{`for="[fe80::1%eth0]"`}, Addr{Client: "10.0.0.2"}},
	})
	h := http.Header{"X-Forwarded-For": {"203.0.113.9"}}
	if got := p.Resolve("10.0.0.2:80", h); got != (Addr{Client: "10.0.0.2"}) {
		t.Errorf("X-Forwarded-For read by a Forwarded policy: %+v", got)
	}
}

// FuzzResolve: whatever the peer and the header lines, Resolve never
// panics; it believes a header only from a trusted peer, and then names
// that peer as the proxy; the client it reports is the peer, an address,
// or an RFC 7239 identifier; and nothing written left of the client's
// address (by the client itself) changes the outcome.
func FuzzResolve(f *testing.F) {
	for _, seed := range []struct {
		peer, line1, line2 string
		forwarded          bool
	}{
		{"127.0.0.1:5555", "203.0.113.9", "", false},
		{"[::1]:5555", "2001:db8::7, 10.0.0.1", "", false},
		{"[fe80::1%eth0]:443", "", "", false},
		{"10.0.0.2:80", "198.51.100.66", "[2001:db8::7]:4711, fd00::1", false},
		{"10.0.0.2:80", "bogus", "", false},
		{"192.0.2.1:1", "203.0.113.9", "", false},
		{"10.0.0.2:80", `for="[2001:db8:cafe::17]:4711"`, "", true},
		{"10.0.0.2:80", "for=unknown, for=_hidden;by=10.0.0.1", "for=10.0.0.1", true},
		{"10.0.0.2:80", `for=192.0.2.60;proto=http;host="a,b"`, `for="\_x"`, true},
		{"10.0.0.2:80", `for="`, "", true},
		{"pipe", "", "", false},
	} {
		f.Add(seed.peer, seed.line1, seed.line2, seed.forwarded)
	}
	p := mustPolicy(f, testProxies, XForwardedFor)
	f.Fuzz(func(t *testing.T, peer, line1, line2 string, forwarded bool) {
		p := p
		name := "X-Forwarded-For"
		if forwarded {
			p.Header, name = Forwarded, "Forwarded"
		}
		h := http.Header{name: {line1, line2}}
		got := p.Resolve(peer, h)
		direct := Policy{}.Resolve(peer, h)
		peerAddr, isIP := parsePeer(peer)
		switch {
		case !isIP || !p.trusts(peerAddr):
			if got != direct || got.Proxy != "" {
				t.Fatalf("untrusted peer %q: %+v, want %+v", peer, got, direct)
			}
			return
		case got.Proxy == "":
			if got != direct {
				t.Fatalf("peer %q not named as proxy: %+v", peer, got)
			}
			return
		case got.Proxy != peerAddr.String():
			t.Fatalf("peer %q named as proxy %q", peer, got.Proxy)
		}
		client, err := netip.ParseAddr(got.Client)
		if err != nil && got.Client != unknown && !obfuscated(got.Client) || err == nil && client.String() != got.Client {
			t.Fatalf("client %q is neither an address nor an identifier", got.Client)
		}
		if err == nil && p.trusts(client) {
			return // every hop was a trusted proxy: the leftmost is the client
		}
		// A line the client sent before the proxies' lines changes nothing.
		spoofed := http.Header{name: {"for=198.51.100.66, 198.51.100.66, \"", line1, line2}}
		if again := p.Resolve(peer, spoofed); again != got {
			t.Fatalf("a line in front changed %+v into %+v", got, again)
		}
		if !forwarded {
			// Nor, in X-Forwarded-For, anything in front on the same line.
			spoofed = http.Header{name: {"198.51.100.66, \"junk\"," + line1, line2}}
			if again := p.Resolve(peer, spoofed); again != got {
				t.Fatalf("entries in front changed %+v into %+v", got, again)
			}
		}
	})
}
