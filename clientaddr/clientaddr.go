// Package clientaddr finds where an HTTP request came from: the address of
// the connection's peer or, when that peer is a proxy the operator trusts,
// the client address the proxy forwarded in X-Forwarded-For or Forwarded
// (RFC 7239). It parses and decides; it does no I/O.
package clientaddr

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Header names the request header trusted proxies write the client's
// address to.
type Header string

const (
	XForwardedFor Header = "x-forwarded-for"
	Forwarded     Header = "forwarded" // RFC 7239
)

// ParseHeader returns the Header named s (x-forwarded-for or forwarded,
// in any case).
func ParseHeader(s string) (Header, error) {
	switch h := Header(strings.ToLower(strings.TrimSpace(s))); h {
	case XForwardedFor, Forwarded:
		return h, nil
	}
	return "", fmt.Errorf("%q is not x-forwarded-for or forwarded", s)
}

// MarshalText and UnmarshalText make a Header a flag (flag.TextVar).
func (h Header) MarshalText() ([]byte, error) { return []byte(h), nil }

func (h *Header) UnmarshalText(b []byte) (err error) {
	*h, err = ParseHeader(string(b))
	return err
}

// Proxies are the networks of trusted proxies.
type Proxies []netip.Prefix

// Policy says whose forwarded addresses to believe. The zero Policy trusts
// no proxy: every request is from its peer.
type Policy struct {
	// Proxies are the networks of the trusted proxies.
	Proxies Proxies
	// Header is the one header they write; the other is ignored, since a
	// proxy passes on whatever a client put in a header it does not set.
	// Empty means XForwardedFor.
	Header Header
}

// ParseProxies parses a comma-separated list of networks in CIDR notation
// (10.0.0.0/8, fd00::/8); a single address stands for itself. An empty s
// is no network.
func ParseProxies(s string) (Proxies, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out Proxies
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		p, err := netip.ParsePrefix(part)
		if err != nil {
			a, aerr := netip.ParseAddr(part)
			if aerr != nil || a.Zone() != "" {
				return nil, fmt.Errorf("%q is not a network (CIDR, as 10.0.0.0/8 or fd00::/8) or an address", part)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		// Peers are compared unmapped, so ::ffff:10.0.0.0/104 means 10.0.0.0/8.
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Addr is where a request came from.
type Addr struct {
	// Client is the client's address: the peer's, or the one a trusted
	// proxy forwarded, which may be RFC 7239's "unknown" or an obfuscated
	// identifier ("_hidden") when the proxy did not disclose it.
	Client string
	// Proxy is the peer's address when Client came through it as a
	// forwarded address; "" when the peer is the client.
	Proxy string
}

// maxNode bounds an address or identifier taken from a header: the longest
// IPv6 address with brackets and port is 53 bytes.
const maxNode = 100

// Resolve returns where a request from remoteAddr (http.Request.RemoteAddr)
// with headers h came from. Only a peer inside p.Proxies is believed, and
// only in p.Header. Its addresses are read from the right, each written by
// the proxy that received the request from it, skipping those of trusted
// proxies: the first other one is the client, so whatever a client put in
// front of its own address is never reached. If every one is a trusted
// proxy, the leftmost, where the request started, is the client. A header
// that cannot be read up to the client is ignored: the peer is the client.
func (p Policy) Resolve(remoteAddr string, h http.Header) Addr {
	peer, ok := parsePeer(remoteAddr)
	if !ok {
		return Addr{Client: peerHost(remoteAddr)}
	}
	direct := Addr{Client: peer.String()}
	if !p.trusts(peer) {
		return direct
	}
	syntax := xffSyntax
	if p.Header == Forwarded {
		syntax = forwardedSyntax
	}
	client, err := p.rightmostUntrusted(h.Values(syntax.name), syntax)
	if err != nil {
		return direct
	}
	return Addr{Client: client, Proxy: peer.String()}
}

// headerSyntax is how to read one of the headers: split splits a line
// into its nodes' text, in order; parse parses one.
type headerSyntax struct {
	name  string
	split func(line string) ([]string, error)
	parse func(text string) (node, bool)
}

var (
	xffSyntax = headerSyntax{name: "X-Forwarded-For", split: xffNodes, parse: func(text string) (node, bool) {
		a, ok := parseAddrPort(text)
		return node{addr: a}, ok
	}}
	forwardedSyntax = headerSyntax{name: "Forwarded", split: forwardedNodes, parse: parseForwardedNode}
)

var (
	errNoAddress = errors.New("no forwarded address")
	errMalformed = errors.New("malformed forwarded address")
)

// rightmostUntrusted walks the nodes of the header lines from the last
// line's last node to the first line's first. A node is parsed only when
// the walk reaches it, and a line split only then, so what a client sent
// left of its own address cannot make the header unreadable (in
// Forwarded, whose quoted strings may hold commas, as long as the proxy
// wrote a line of its own).
func (p Policy) rightmostUntrusted(lines []string, syntax headerSyntax) (string, error) {
	leftmost := ""
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Trim(lines[i], " \t") == "" {
			continue // an empty line lists nothing (RFC 9110 section 5.6.1)
		}
		texts, err := syntax.split(lines[i])
		if err != nil {
			return "", err
		}
		for j := len(texts) - 1; j >= 0; j-- {
			n, ok := syntax.parse(texts[j])
			if !ok {
				return "", errMalformed
			}
			if n.name != "" || !p.trusts(n.addr) {
				return n.String(), nil
			}
			leftmost = n.String()
		}
	}
	if leftmost == "" {
		return "", errNoAddress
	}
	return leftmost, nil
}

func (p Policy) trusts(a netip.Addr) bool {
	a = a.WithZone("").Unmap() // a zoned address matches no prefix
	for _, n := range p.Proxies {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// node is an address in a forwarding header, or, in Forwarded, an
// identifier that stands for one (name: "unknown" or "_obfuscated").
type node struct {
	addr netip.Addr
	name string
}

func (n node) String() string {
	if n.name != "" {
		return n.name
	}
	return n.addr.String()
}

// parsePeer parses a RemoteAddr: host:port with the host an IP address,
// IPv6 in brackets, possibly with a zone ([fe80::1%eth0]:443).
func parsePeer(remoteAddr string) (netip.Addr, bool) {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// peerHost is what can be said of a peer that is not an IP address and
// port (a Unix socket, a test's made-up address): its host part if it has
// one, else all of it.
func peerHost(remoteAddr string) string {
	if host, _, err := net.SplitHostPort(remoteAddr); err == nil {
		return host
	}
	return remoteAddr
}

// xffNodes splits an X-Forwarded-For line: addresses separated by commas.
func xffNodes(line string) ([]string, error) {
	parts := strings.Split(line, ",")
	for i, part := range parts {
		parts[i] = strings.Trim(part, " \t")
	}
	return parts, nil
}

// parseAddrPort parses an X-Forwarded-For address: 192.0.2.1, 192.0.2.1:80, 2001:db8::1,
// [2001:db8::1] or [2001:db8::1]:80.
func parseAddrPort(s string) (netip.Addr, bool) {
	if len(s) > maxNode {
		return netip.Addr{}, false
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap(), true
	}
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 || (end+1 < len(s) && !validPort(s[end+1:])) {
			return netip.Addr{}, false
		}
		a, err := netip.ParseAddr(s[1:end])
		return a.Unmap(), err == nil && a.Is6()
	}
	host, port, ok := strings.Cut(s, ":")
	if !ok || !validPort(":"+port) {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(host)
	return a, err == nil && a.Is4()
}

// validPort reports whether s is ":" and 1 to 5 digits.
func validPort(s string) bool {
	digits, ok := strings.CutPrefix(s, ":")
	if !ok || len(digits) == 0 || len(digits) > 5 {
		return false
	}
	for _, c := range []byte(digits) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
