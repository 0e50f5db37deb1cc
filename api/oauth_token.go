package api

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/tokens"
)

// tokenResponse is the success of RFC 6749 section 5.1.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token"`
	Scope        string `json:"scope"`
	// nonce goes in the DPoP-Nonce header (RFC 9449 section 8.2).
	nonce string
}

func (o *OAuth) token(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	resp, err := o.grant(r.Context(), w, r)
	o.svc.Metrics.oauth("token", err, time.Since(start))
	if err != nil {
		o.answerError(w, "token", err)
		return
	}
	if tr, ok := resp.(tokenResponse); ok && tr.nonce != "" {
		w.Header().Set("DPoP-Nonce", tr.nonce)
	}
	noStore(w)
	writeJSON(w, http.StatusOK, resp)
}

// grant answers a token request with the grant it asks for.
func (o *OAuth) grant(ctx context.Context, w http.ResponseWriter, r *http.Request) (any, error) {
	f, ferr := form(w, r, "resource")
	if ferr != nil {
		return nil, ferr
	}
	switch first(f["grant_type"]) {
	case "refresh_token":
		return o.refresh(ctx, r, f)
	case "client_credentials":
		return o.clientCredentials(r, f)
	case "":
		return nil, badRequest("grant_type is required")
	}
	return nil, &oauthError{status: http.StatusBadRequest, code: errUnsupportedGrantType,
		description: "only the refresh_token and client_credentials grants are served here"}
}

func (o *OAuth) refresh(ctx context.Context, r *http.Request, f map[string][]string) (tokenResponse, error) {
	client, aerr := o.authenticate(r, f)
	if aerr != nil {
		return tokenResponse{}, aerr
	}
	token := first(f["refresh_token"])
	if token == "" {
		return tokenResponse{}, badRequest("refresh_token is required")
	}
	req := tokens.RefreshRequest{Token: token, ClientID: client.ID, Context: requestContext(r)}
	switch proofs := r.Header.Values("DPoP"); len(proofs) {
	case 0:
	case 1:
		// The proof names this endpoint as the client reaches it: the
		// public URL, whatever proxy is in between.
		req.DPoP = &tokens.DPoPProof{Proof: proofs[0], Method: r.Method, URL: o.issuer + PathToken}
	default:
		return tokenResponse{}, domain.Errorf(domain.EInvalidDPoPProof, "more than one DPoP header")
	}
	if s, ok := f["scope"]; ok && first(s) != "" {
		scope, err := domain.ParseScope(first(s))
		if err != nil {
			return tokenResponse{}, err
		}
		req.Scope = scope
	}
	// RFC 8707: the resource selects the access token's audience; one
	// token has one, so one resource per request. An empty one is omitted
	// (RFC 6749 section 3.2).
	var res []string
	for _, v := range f["resource"] {
		if v != "" {
			res = append(res, v)
		}
	}
	switch len(res) {
	case 0:
	case 1:
		if _, err := domain.ValidateAudiences(res); err != nil {
			return tokenResponse{}, &oauthError{status: http.StatusBadRequest, code: domain.EInvalidTarget, description: "resource is not a valid URI"}
		}
		req.Audience = res[0]
	default:
		return tokenResponse{}, &oauthError{status: http.StatusBadRequest, code: domain.EInvalidTarget,
			description: "one resource per request: each access token has one audience"}
	}
	// A client that went away cannot get the new token, and its retry of
	// this one would then be judged a replay; once started, the refresh
	// runs to the end whatever the client does, never half done.
	if ctx.Err() != nil {
		o.svc.Metrics.Dropped("http", "token", droppedCallerGone)
		return tokenResponse{}, dropErrors[droppedCallerGone]
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
	defer cancel()
	g, err := o.svc.Tokens.Refresh(ctx, req)
	if err != nil {
		return tokenResponse{}, err
	}
	reply, err := o.svc.tokenReply(g)
	if err != nil {
		return tokenResponse{}, err
	}
	return tokenResponse{AccessToken: reply.AccessToken, TokenType: reply.TokenType, ExpiresIn: reply.ExpiresIn,
		RefreshToken: reply.RefreshToken, Scope: reply.Scope, nonce: reply.DPoPNonce}, nil
}

// revoke is RFC 7009: 200 whatever the token, unless the client fails to
// authenticate. A refresh token revokes its family if it is the client's;
// so does an access token, whose family is its sid.
func (o *OAuth) revoke(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	err := o.revokeToken(w, r)
	o.svc.Metrics.oauth("revoke", err, time.Since(start))
	if err != nil {
		o.answerError(w, "revoke", err)
		return
	}
	noStore(w)
	w.WriteHeader(http.StatusOK)
}

func (o *OAuth) revokeToken(w http.ResponseWriter, r *http.Request) error {
	f, ferr := form(w, r)
	if ferr != nil {
		return ferr
	}
	client, aerr := o.authenticate(r, f)
	if aerr != nil {
		return aerr
	}
	token := first(f["token"])
	if token == "" {
		return badRequest("token is required")
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	if strings.HasPrefix(token, "rt1.") {
		_, _, err := o.svc.Tokens.RevokeToken(ctx, token, client.ID, domain.ReasonRevoked, requestContext(r))
		return err
	}
	claims, err := o.svc.Access.Verify(token, o.svc.Now())
	if err != nil || claims.ClientID != client.ID {
		return nil // not a token of this client: nothing to do (RFC 7009 2.2)
	}
	_, _, err = o.svc.Tokens.RevokeFamily(ctx, claims.SID, domain.ReasonRevoked, requestContext(r))
	return err
}
