package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"time"
	"unicode/utf8"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
)

// MaxRequestBytes bounds every request body; the largest valid command is a
// few KiB.
const MaxRequestBytes = 64 << 10

// IssueRequest is the wire form of tokens.cmd.issue.
type IssueRequest struct {
	Subject  string         `json:"subject"`
	ClientID string         `json:"client_id"`
	Scope    string         `json:"scope"`
	Audience []string       `json:"audience"`
	Context  domain.Context `json:"context"`
}

// RefreshRequest is the wire form of tokens.cmd.refresh.
type RefreshRequest struct {
	RefreshToken string         `json:"refresh_token"`
	ClientID     string         `json:"client_id"`
	Scope        *string        `json:"scope"`
	Audience     string         `json:"audience"`
	Context      domain.Context `json:"context"`
}

// RevokeRequest is the wire form of tokens.cmd.revoke: exactly one selector.
type RevokeRequest struct {
	RefreshToken *string        `json:"refresh_token"`
	FamilyID     *string        `json:"family_id"`
	Subject      *string        `json:"subject"`
	ClientID     *string        `json:"client_id"`
	Reason       string         `json:"reason"`
	Context      domain.Context `json:"context"`
}

// TokenReply answers a successful issue or refresh.
type TokenReply struct {
	RefreshToken          string `json:"refresh_token"`
	FamilyID              string `json:"family_id"`
	TokenType             string `json:"token_type"`
	AccessToken           string `json:"access_token"`
	ExpiresIn             int64  `json:"expires_in"`
	Scope                 string `json:"scope"`
	RefreshTokenExpiresAt string `json:"refresh_token_expires_at"`
	Seq                   uint64 `json:"seq"`
}

// RevokeReply answers a revoke; Seq is the last family.revoked event's, if any.
type RevokeReply struct {
	RevokedFamilies int    `json:"revoked_families"`
	Seq             uint64 `json:"seq,omitempty"`
}

// ErrorReply is the body of every failure.
type ErrorReply struct {
	Error        string `json:"error"`
	Description  string `json:"error_description"`
	RetryAfterMs int64  `json:"retry_after_ms,omitempty"`
}

// Decode parses a request strictly: one JSON object of known fields, valid
// UTF-8, within MaxRequestBytes. Failures are EInvalidRequest errors.
func Decode(data []byte, v any) error {
	if len(data) > MaxRequestBytes {
		return domain.Errorf(domain.EInvalidRequest, "request is larger than %d bytes", MaxRequestBytes)
	}
	// encoding/json would silently replace invalid UTF-8; refuse it instead.
	if !utf8.Valid(data) {
		return domain.Errorf(domain.EInvalidRequest, "request is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return domain.Errorf(domain.EInvalidRequest, "malformed JSON: %s", describeJSONError(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return domain.Errorf(domain.EInvalidRequest, "malformed JSON: data after the object")
	}
	return nil
}

func describeJSONError(err error) string {
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &typeErr):
		return "field " + typeErr.Field + " has the wrong type"
	case errors.Is(err, io.EOF):
		return "empty request"
	}
	msg := err.Error()
	if len(msg) > 120 {
		msg = msg[:120]
	}
	return msg
}

func errorReply(err error) ErrorReply {
	r := ErrorReply{Error: domain.ErrorCode(err), Description: domain.ErrorMessage(err)}
	var de *domain.Error
	if errors.As(err, &de) {
		r.RetryAfterMs = de.RetryAfterMs
	}
	return r
}

// httpStatus maps a contract error code to its status code.
func httpStatus(code string) int {
	switch code {
	case domain.EInvalidRequest, domain.EInvalidGrant, domain.EInvalidScope, domain.EInvalidTarget:
		return 400
	case domain.ENotFound:
		return 404
	case domain.EUnavailable:
		return 503
	}
	return 500
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// ParseIssue decodes and validates tokens.cmd.issue.
func ParseIssue(data []byte) (events.IssueRequest, error) {
	var in IssueRequest
	if err := Decode(data, &in); err != nil {
		return events.IssueRequest{}, err
	}
	if err := domain.ValidateName("subject", in.Subject); err != nil {
		return events.IssueRequest{}, err
	}
	if err := domain.ValidateName("client_id", in.ClientID); err != nil {
		return events.IssueRequest{}, err
	}
	scope, err := domain.ParseScope(in.Scope)
	if err != nil {
		return events.IssueRequest{}, err
	}
	aud, err := domain.ValidateAudiences(in.Audience)
	if err != nil {
		return events.IssueRequest{}, err
	}
	if err := domain.ValidateContext(in.Context); err != nil {
		return events.IssueRequest{}, err
	}
	return events.IssueRequest{Subject: in.Subject, ClientID: in.ClientID, Scope: scope, Audience: aud, Context: in.Context}, nil
}

// ParseRefresh decodes and validates tokens.cmd.refresh. The token itself is
// verified later, by the service, so every bad token gets the same answer.
func ParseRefresh(data []byte) (events.RefreshRequest, error) {
	var in RefreshRequest
	if err := Decode(data, &in); err != nil {
		return events.RefreshRequest{}, err
	}
	if in.RefreshToken == "" {
		return events.RefreshRequest{}, domain.Errorf(domain.EInvalidRequest, "refresh_token is required")
	}
	if err := domain.ValidateName("client_id", in.ClientID); err != nil {
		return events.RefreshRequest{}, err
	}
	var scope []string
	if in.Scope != nil && *in.Scope != "" {
		var err error
		if scope, err = domain.ParseScope(*in.Scope); err != nil {
			return events.RefreshRequest{}, err
		}
	}
	if in.Audience != "" {
		if _, err := domain.ValidateAudiences([]string{in.Audience}); err != nil {
			return events.RefreshRequest{}, err
		}
	}
	if err := domain.ValidateContext(in.Context); err != nil {
		return events.RefreshRequest{}, err
	}
	return events.RefreshRequest{Token: in.RefreshToken, ClientID: in.ClientID, Scope: scope,
		Audience: in.Audience, Context: in.Context}, nil
}

// ParseRevoke decodes tokens.cmd.revoke and checks it names exactly one
// selector and a valid reason.
func ParseRevoke(data []byte) (RevokeRequest, error) {
	var in RevokeRequest
	if err := Decode(data, &in); err != nil {
		return RevokeRequest{}, err
	}
	selectors := 0
	for _, sel := range []*string{in.RefreshToken, in.FamilyID, in.Subject, in.ClientID} {
		if sel != nil {
			selectors++
		}
	}
	if selectors != 1 {
		return RevokeRequest{}, domain.Errorf(domain.EInvalidRequest, "exactly one of refresh_token, family_id, subject, client_id is required")
	}
	if in.Reason != "" {
		if err := domain.ValidateName("reason", in.Reason); err != nil {
			return RevokeRequest{}, err
		}
	}
	if err := domain.ValidateContext(in.Context); err != nil {
		return RevokeRequest{}, err
	}
	return in, nil
}
