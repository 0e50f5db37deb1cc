package dpopclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"golang.org/x/oauth2"
)

// Client is an http.RoundTripper that adds a DPoP proof to every request
// it carries: to the token endpoint, as x/oauth2 refreshes a token, and to
// protected resources, with ath when the request carries a DPoP access
// token (Authorization: DPoP, as oauth2.Transport sets it for token_type
// DPoP). It keeps the last DPoP-Nonce of each server and, when a server
// refuses a proof with use_dpop_nonce, retries the request once with the
// nonce that came with the refusal (RFC 9449 sections 8 and 9).
//
// x/oauth2 has no hook for DPoP, so this is where it fits: below x/oauth2,
// which sees only the final answer and takes token_type DPoP as it comes.
type Client struct {
	Key *Key
	// Base carries the requests; nil is http.DefaultTransport.
	Base http.RoundTripper

	mu     sync.Mutex
	nonces map[string]string // by origin: a nonce is the server's, not the URL's
}

// NewClient returns a Client signing with key.
func NewClient(key *Key) *Client { return &Client{Key: key} }

// TokenSource refreshes t with cfg through c (the refresh token grant with
// a proof), refusing a token that the server did not bind to the key
// (token_type other than DPoP, RFC 9449 section 5).
func (c *Client) TokenSource(ctx context.Context, cfg *oauth2.Config, t *oauth2.Token) oauth2.TokenSource {
	ctx = context.WithValue(ctx, oauth2.HTTPClient, &http.Client{Transport: c})
	return &boundSource{src: cfg.TokenSource(ctx, t)}
}

type boundSource struct{ src oauth2.TokenSource }

func (s *boundSource) Token() (*oauth2.Token, error) {
	t, err := s.src.Token()
	if err != nil {
		return nil, err
	}
	if !strings.EqualFold(t.TokenType, "DPoP") {
		return nil, fmt.Errorf("%w: token_type %q", ErrNotBound, t.TokenType)
	}
	return t, nil
}

// HTTPClient calls protected resources with src's access tokens and a
// proof bound to each (ath).
func (c *Client) HTTPClient(src oauth2.TokenSource) *http.Client {
	return &http.Client{Transport: &oauth2.Transport{Source: src, Base: c}}
}

// Nonce is the last DPoP-Nonce the server of u gave, "" if none.
func (c *Client) Nonce(u *url.URL) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nonces[origin(u)]
}

func (c *Client) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.send(req)
	if err != nil || !askedForNonce(resp) {
		return resp, err
	}
	if req.Body != nil && req.GetBody == nil {
		return resp, nil // the body cannot be sent again
	}
	resp.Body.Close()
	return c.send(req)
}

// send sends req once with a proof under the current nonce, keeping the
// nonce the answer brings.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	out := req.Clone(req.Context())
	if req.GetBody != nil {
		body, err := req.GetBody()
		if err != nil {
			return nil, err
		}
		out.Body = body
	}
	proof, err := c.Key.Proof(ProofRequest{Method: req.Method, URL: req.URL.String(), Nonce: c.Nonce(req.URL), AccessToken: dpopAccessToken(req)})
	if err != nil {
		if out.Body != nil {
			out.Body.Close()
		}
		return nil, err
	}
	out.Header.Set("DPoP", proof)
	base := c.Base
	if base == nil {
		base = http.DefaultTransport
	}
	resp, err := base.RoundTrip(out)
	if err != nil {
		return nil, err
	}
	if nonce := resp.Header.Get("DPoP-Nonce"); nonce != "" {
		c.mu.Lock()
		if c.nonces == nil {
			c.nonces = map[string]string{}
		}
		c.nonces[origin(req.URL)] = nonce
		c.mu.Unlock()
	}
	return resp, nil
}

// dpopAccessToken is the access token of an Authorization: DPoP header.
func dpopAccessToken(req *http.Request) string {
	scheme, token, ok := strings.Cut(req.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "DPoP") {
		return ""
	}
	return strings.TrimSpace(token)
}

// askedForNonce tells whether resp refuses a proof for want of a fresh
// nonce and gives one: an authorization server answers 400 with error
// use_dpop_nonce (RFC 9449 section 8), a resource server 401 with a DPoP
// challenge of that error (section 9). resp's body stays readable.
func askedForNonce(resp *http.Response) bool {
	if resp.Header.Get("DPoP-Nonce") == "" {
		return false
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		for _, challenge := range resp.Header.Values("WWW-Authenticate") {
			scheme, params, _ := strings.Cut(challenge, " ")
			if strings.EqualFold(scheme, "DPoP") && strings.Contains(params, `error="use_dpop_nonce"`) {
				return true
			}
		}
	case http.StatusBadRequest:
		raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(raw))
		var body struct {
			Error string `json:"error"`
		}
		return err == nil && json.Unmarshal(raw, &body) == nil && body.Error == "use_dpop_nonce"
	}
	return false
}

// origin is scheme://host of u.
func origin(u *url.URL) string {
	return strings.ToLower(u.Scheme + "://" + u.Host)
}
