package client

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
)

// entry is a cached access token.
type entry struct {
	tok     AccessToken
	asked   string    // the audience asked for; "" is the family's first
	full    bool      // minted for the whole grant (no scope asked)
	renewAt time.Time // serving it from now on starts a background renewal
	staleAt time.Time // no longer served from now on: Expiry minus the leeway
}

// serves reports whether e may answer r: the same audience, and a scope
// that covers r's. Only a token for the whole grant answers a request for
// the whole grant: any other may be down-scoped.
func (e *entry) serves(r request) bool {
	if r.audience != e.asked && (r.audience == "" || r.audience != e.tok.Audience) {
		return false
	}
	if r.full() {
		return e.full
	}
	return domain.Subset(r.scope, e.tok.Scope)
}

// request is what renewing e asks for.
func (e *entry) request() request {
	if e.full {
		return request{audience: e.asked}
	}
	return request{audience: e.asked, scope: e.tok.Scope}
}

// key identifies e in the cache: its audience and granted scope.
func (e *entry) key() string {
	if e.full {
		return e.asked + "\x00*"
	}
	return e.asked + "\x00" + scopeKey(e.tok.Scope)
}

func scopeKey(scope []string) string {
	sorted := slices.Clone(scope)
	slices.Sort(sorted)
	return strings.Join(sorted, " ")
}

// lookup returns the cached token that answers r and stays fresh longest,
// nil if none; s.mu is held.
func (s *Source) lookup(r request, now time.Time) *entry {
	var best *entry
	for _, e := range s.cache {
		if now.Before(e.staleAt) && e.serves(r) && (best == nil || e.staleAt.After(best.staleAt)) {
			best = e
		}
	}
	return best
}

// put caches e in place of the token with the same audience and scope,
// dropping every token past its leeway and, beyond MaxTokens, those that
// go stale first; s.mu is held.
func (s *Source) put(e *entry) {
	now := s.o.Now()
	for k, old := range s.cache {
		if !now.Before(old.staleAt) {
			delete(s.cache, k)
		}
	}
	s.cache[e.key()] = e
	for len(s.cache) > s.o.MaxTokens {
		var first string
		for k, old := range s.cache {
			if first == "" || old.staleAt.Before(s.cache[first].staleAt) {
				first = k
			}
		}
		delete(s.cache, first)
	}
}

// newEntry checks reply, tokend's answer to r asked at the time asked, and
// makes it a cache entry. A reply that grants less than r asked is
// ErrBadReply.
func (s *Source) newEntry(r request, reply wire.TokenReply, asked time.Time) (*entry, error) {
	if reply.AccessToken == "" {
		return nil, fmt.Errorf("%w: no access token in the reply", ErrBadReply)
	}
	scope, err := domain.ParseScope(reply.Scope)
	if err != nil {
		return nil, fmt.Errorf("%w: scope: %v", ErrBadReply, err)
	}
	life := time.Duration(reply.ExpiresIn) * time.Second
	if life <= 0 {
		return nil, fmt.Errorf("%w: expires_in %d", ErrBadReply, reply.ExpiresIn)
	}
	claims := jwtClaims(reply.AccessToken)
	expiry := asked.Add(life)
	// tokend counts expires_in from its iat, which it truncates to the
	// second: the JWT's exp may come up to a second before asked+life, and
	// then the token expires at exp. An exp further off says the two
	// clocks differ; asked+life, on this clock, is then the better guess.
	if exp := time.Unix(claims.exp, 0); claims.exp != 0 && exp.Before(expiry) && expiry.Sub(exp) <= time.Second {
		expiry = exp
	}
	e := &entry{
		tok: AccessToken{Token: reply.AccessToken, Expiry: expiry, Scope: scope, Audience: claims.audience,
			TokenType: reply.TokenType},
		asked: r.audience, full: r.full(),
	}
	if r.audience != "" && e.tok.Audience != r.audience {
		return nil, fmt.Errorf("%w: the token is not for the audience asked for", ErrBadReply)
	}
	if !e.serves(r) {
		return nil, fmt.Errorf("%w: the granted scope does not cover the scope asked for", ErrBadReply)
	}
	e.staleAt = e.tok.Expiry.Add(-min(s.o.Leeway, life/4))
	frac := s.o.RenewAfter + renewJitter*(2*rand.Float64()-1)
	e.renewAt = asked.Add(time.Duration(frac * float64(life)))
	if e.renewAt.After(e.staleAt) {
		e.renewAt = e.staleAt
	}
	return e, nil
}

// jwtClaims reads the aud and exp claims of a JWT without verifying it
// (the Source only needs to know which audience tokend minted it for, and
// until when), zero if the token is not a JWT.
func jwtClaims(jwt string) (c accessClaims) {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return c
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return c
	}
	var claims struct {
		Aud json.RawMessage `json:"aud"`
		Exp int64           `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil {
		return c
	}
	c.exp = claims.Exp
	var one string
	var many []string
	switch {
	case claims.Aud == nil:
	case json.Unmarshal(claims.Aud, &one) == nil:
		c.audience = one
	case json.Unmarshal(claims.Aud, &many) == nil && len(many) == 1:
		c.audience = many[0]
	}
	return c
}

// accessClaims are what the cache reads of an access token: its single
// audience ("" for none or several) and its exp (0 if absent).
type accessClaims struct {
	audience string
	exp      int64
}
