package client

import (
	"cmp"
	"context"

	"golang.org/x/oauth2"
)

// OAuth2 returns an oauth2.TokenSource of access tokens for audience and
// scope, for oauth2.NewClient and oauth2.Transport:
//
//	httpClient := oauth2.NewClient(ctx, src.OAuth2("https://api.example.com", "api:read"))
//
// Each token's Expiry is when the Source wants to renew it (RenewAfter of
// its lifetime, by Options.Now), not the JWT's exp: the oauth2.ReuseTokenSource
// inside oauth2.NewClient then comes back to the Source in time for the
// renewal to happen ahead of expiry. Token calls are bounded by
// DefaultTimeout; errors are the Source's (see Terminal, Transient).
func (s *Source) OAuth2(audience string, scope ...string) oauth2.TokenSource {
	return oauth2Source{s: s, audience: audience, scope: scope}
}

type oauth2Source struct {
	s        *Source
	audience string
	scope    []string
}

func (o oauth2Source) Token() (*oauth2.Token, error) {
	ctx, cancel := context.WithTimeout(context.Background(), DefaultTimeout)
	defer cancel()
	e, err := o.s.get(ctx, o.audience, o.scope)
	if err != nil {
		return nil, err
	}
	// The type tokend answered: DPoP for a token bound to the Source's
	// key, which a resource server takes only with a proof.
	return &oauth2.Token{AccessToken: e.tok.Token, TokenType: cmp.Or(e.tok.TokenType, "Bearer"), Expiry: e.renewAt}, nil
}
