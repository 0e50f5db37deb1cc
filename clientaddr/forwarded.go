package clientaddr

import (
	"errors"
	"net/netip"
	"strings"
)

var errForwarded = errors.New("malformed Forwarded header")

// unknown is RFC 7239's node for a client the proxy cannot name; an
// element without for= says as much.
const unknown = "unknown"

// forwardedNodes splits a Forwarded line (RFC 7239 section 4) into the
// for= value of each forwarded-element, in order; an element without one
// is unknown. Empty list elements count for nothing (RFC 9110 section
// 5.6.1). Quoted strings may hold commas, so the whole line must parse.
func forwardedNodes(line string) ([]string, error) {
	var nodes []string
	s := scanner{s: line}
	for {
		s.skipOWS()
		if s.done() {
			return nodes, nil
		}
		forValue, hasFor, empty := "", false, true
		for {
			s.skipOWS()
			if s.done() || s.peek() == ',' {
				break
			}
			if s.peek() == ';' {
				s.i++
				continue
			}
			name := s.token()
			if name == "" || !s.consume('=') {
				return nil, errForwarded
			}
			value, ok := s.value()
			if !ok {
				return nil, errForwarded
			}
			empty = false
			if strings.EqualFold(name, "for") {
				if hasFor { // a parameter occurs once per element (section 4)
					return nil, errForwarded
				}
				forValue, hasFor = value, true
			}
			s.skipOWS()
			if !s.done() && s.peek() != ';' && s.peek() != ',' {
				return nil, errForwarded
			}
		}
		s.consume(',')
		switch {
		case empty:
		case !hasFor:
			nodes = append(nodes, unknown)
		default:
			nodes = append(nodes, forValue)
		}
	}
}

// parseForwardedNode parses a node (RFC 7239 section 6): an IPv4 address,
// an IPv6 address in brackets, "unknown" or an obfuscated identifier,
// optionally with a port or an obfuscated port.
func parseForwardedNode(v string) (node, bool) {
	if len(v) > maxNode {
		return node{}, false
	}
	name, port := v, ""
	if strings.HasPrefix(v, "[") {
		end := strings.IndexByte(v, ']')
		if end < 0 {
			return node{}, false
		}
		name, port = v[:end+1], v[end+1:]
	} else if i := strings.IndexByte(v, ':'); i >= 0 {
		name, port = v[:i], v[i:]
	}
	if port != "" && !validPort(port) && !(strings.HasPrefix(port, ":_") && obfuscated(port[1:])) {
		return node{}, false
	}
	switch {
	case strings.EqualFold(name, unknown):
		return node{name: unknown}, true
	case obfuscated(name):
		return node{name: name}, true
	case strings.HasPrefix(name, "["):
		a, err := netip.ParseAddr(name[1 : len(name)-1])
		return node{addr: a.Unmap()}, err == nil && a.Is6() && a.Zone() == ""
	}
	a, err := netip.ParseAddr(name)
	return node{addr: a}, err == nil && a.Is4()
}

// obfuscated reports whether s is an obfnode or obfport: "_" and one or
// more of ALPHA, DIGIT, ".", "_", "-".
func obfuscated(s string) bool {
	rest, ok := strings.CutPrefix(s, "_")
	if !ok || rest == "" {
		return false
	}
	for _, c := range []byte(rest) {
		if !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// scanner reads the tokens of an HTTP header value (RFC 9110 section 5.6).
type scanner struct {
	s string
	i int
}

func (s *scanner) done() bool { return s.i >= len(s.s) }
func (s *scanner) peek() byte { return s.s[s.i] }

func (s *scanner) skipOWS() {
	for !s.done() && (s.peek() == ' ' || s.peek() == '\t') {
		s.i++
	}
}

func (s *scanner) consume(c byte) bool {
	if s.done() || s.peek() != c {
		return false
	}
	s.i++
	return true
}

// token reads a token, "" if there is none.
func (s *scanner) token() string {
	start := s.i
	for !s.done() && isTchar(s.peek()) {
		s.i++
	}
	return s.s[start:s.i]
}

// value reads a token or a quoted-string, unquoted.
func (s *scanner) value() (string, bool) {
	if !s.consume('"') {
		t := s.token()
		return t, t != ""
	}
	var b strings.Builder
	for !s.done() {
		c := s.peek()
		s.i++
		switch {
		case c == '"':
			return b.String(), true
		case c == '\\':
			if s.done() || !isQuotable(s.peek()) {
				return "", false
			}
			b.WriteByte(s.peek())
			s.i++
		case isQuotable(c):
			b.WriteByte(c)
		default:
			return "", false
		}
	}
	return "", false // no closing quote
}

// isTchar: RFC 9110 section 5.6.2.
func isTchar(c byte) bool {
	return isAlnum(c) || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// isQuotable is what a quoted-string may hold, escaped or not (HTAB, SP,
// VCHAR, obs-text); only '"' and '\' need the escape.
func isQuotable(c byte) bool {
	return c == '\t' || c == ' ' || (c >= 0x21 && c != 0x7f)
}
