package api

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/tokend/tokend/domain"
)

// introspection is RFC 7662's answer.
type introspection struct {
	Active    bool     `json:"active"`
	Scope     string   `json:"scope,omitempty"`
	ClientID  string   `json:"client_id,omitempty"`
	Sub       string   `json:"sub,omitempty"`
	Aud       []string `json:"aud,omitempty"`
	Iss       string   `json:"iss,omitempty"`
	Exp       int64    `json:"exp,omitempty"`
	Iat       int64    `json:"iat,omitempty"`
	Jti       string   `json:"jti,omitempty"`
	TokenType string   `json:"token_type,omitempty"`
	SID       string   `json:"sid,omitempty"`
}

// introspect is RFC 7662 for confidential clients (resource servers): a
// refresh token is active while it is its family's current one in a live
// family; an access token while it verifies, is unexpired and its family
// is neither revoked nor expired.
func (o *OAuth) introspect(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	out, err := o.inspect(w, r)
	o.svc.Metrics.oauth("introspect", err, time.Since(start))
	if err != nil {
		o.answerError(w, "introspect", err)
		return
	}
	noStore(w)
	writeJSON(w, http.StatusOK, out)
}

func (o *OAuth) inspect(w http.ResponseWriter, r *http.Request) (introspection, error) {
	f, ferr := form(w, r)
	if ferr != nil {
		return introspection{}, ferr
	}
	client, aerr := o.authenticate(r, f)
	if aerr != nil {
		return introspection{}, aerr
	}
	if client.Type != domain.ClientConfidential {
		o.log.Info("oauth introspection refused to a public client")
		return introspection{}, errClientAuth
	}
	token := first(f["token"])
	if token == "" {
		return introspection{}, badRequest("token is required")
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	if strings.HasPrefix(token, "rt1.") {
		in, err := o.svc.Reader.Introspect(ctx, token)
		if err != nil || !in.Active {
			return introspection{}, err
		}
		return introspection{Active: true, Scope: in.Scope, ClientID: in.ClientID, Sub: in.Subject, Aud: in.Audience,
			Iss: o.issuer, Exp: in.ExpiresAt.Unix(), Iat: in.IssuedAt.Unix(), TokenType: "refresh_token", SID: in.FamilyID}, nil
	}
	claims, err := o.svc.Access.Verify(token, o.svc.Now())
	if err != nil {
		return introspection{}, nil
	}
	fam, err := o.svc.Reader.Family(ctx, claims.SID)
	if err != nil || fam.Status != domain.StatusActive {
		return introspection{}, nil
	}
	return introspection{Active: true, Scope: claims.Scope, ClientID: claims.ClientID, Sub: claims.Subject,
		Aud: claims.Audience, Iss: claims.Issuer, Exp: claims.Expiry.Time().Unix(), Iat: claims.IssuedAt.Time().Unix(),
		Jti: claims.ID, TokenType: "access_token", SID: claims.SID}, nil
}
