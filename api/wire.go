package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"time"
	"unicode/utf8"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/projections"
	"github.com/tokend/tokend/tokens"
)

// Decode parses a request strictly: one JSON object of known fields, valid
// UTF-8, within wire.MaxRequestBytes. Failures are EInvalidRequest errors.
func Decode(data []byte, v any) error {
	if len(data) > wire.MaxRequestBytes {
		return domain.Errorf(domain.EInvalidRequest, "request is larger than %d bytes", wire.MaxRequestBytes)
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

func errorReply(err error) wire.ErrorReply {
	r := wire.ErrorReply{Error: domain.ErrorCode(err), Description: domain.ErrorMessage(err)}
	var de *domain.Error
	if errors.As(err, &de) {
		r.RetryAfterMs, r.DPoPNonce = de.RetryAfterMs, de.DPoPNonce
	}
	return r
}

// httpStatus maps a contract error code to its status code.
func httpStatus(code string) int {
	switch code {
	case domain.EInvalidRequest, domain.EInvalidGrant, domain.EInvalidScope, domain.EInvalidTarget,
		domain.EInvalidDPoPProof, domain.EUseDPoPNonce:
		return 400
	case domain.EInvalidClient:
		return 401
	case domain.ENotFound:
		return 404
	case domain.EUnavailable:
		return 503
	}
	return 500
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// ParseIssue decodes and validates tokens.cmd.issue.
func ParseIssue(data []byte) (tokens.IssueRequest, error) {
	var in wire.IssueRequest
	if err := Decode(data, &in); err != nil {
		return tokens.IssueRequest{}, err
	}
	if err := domain.ValidateName("subject", in.Subject); err != nil {
		return tokens.IssueRequest{}, err
	}
	if err := domain.ValidateName("client_id", in.ClientID); err != nil {
		return tokens.IssueRequest{}, err
	}
	scope, err := domain.ParseScope(in.Scope)
	if err != nil {
		return tokens.IssueRequest{}, err
	}
	aud, err := domain.ValidateAudiences(in.Audience)
	if err != nil {
		return tokens.IssueRequest{}, err
	}
	if err := domain.ValidateContext(in.Context); err != nil {
		return tokens.IssueRequest{}, err
	}
	if in.DPoPJKT != "" && !domain.ValidThumbprint(in.DPoPJKT) {
		return tokens.IssueRequest{}, domain.Errorf(domain.EInvalidRequest, "dpop_jkt must be the base64url SHA-256 thumbprint of a key (RFC 7638), 43 characters")
	}
	return tokens.IssueRequest{Subject: in.Subject, ClientID: in.ClientID, Scope: scope, Audience: aud, Context: in.Context,
		DPoPJKT: in.DPoPJKT}, nil
}

// ParseRefresh decodes and validates tokens.cmd.refresh. The token itself is
// verified later, by the service, so every bad token gets the same answer.
func ParseRefresh(data []byte) (tokens.RefreshRequest, error) {
	var in wire.RefreshRequest
	if err := Decode(data, &in); err != nil {
		return tokens.RefreshRequest{}, err
	}
	if in.RefreshToken == "" {
		return tokens.RefreshRequest{}, domain.Errorf(domain.EInvalidRequest, "refresh_token is required")
	}
	if err := domain.ValidateName("client_id", in.ClientID); err != nil {
		return tokens.RefreshRequest{}, err
	}
	var scope []string
	if in.Scope != nil && *in.Scope != "" {
		var err error
		if scope, err = domain.ParseScope(*in.Scope); err != nil {
			return tokens.RefreshRequest{}, err
		}
	}
	if in.Audience != "" {
		if _, err := domain.ValidateAudiences([]string{in.Audience}); err != nil {
			return tokens.RefreshRequest{}, err
		}
	}
	if err := domain.ValidateContext(in.Context); err != nil {
		return tokens.RefreshRequest{}, err
	}
	req := tokens.RefreshRequest{Token: in.RefreshToken, ClientID: in.ClientID, Scope: scope,
		Audience: in.Audience, Context: in.Context, Recover: in.Recover}
	switch {
	case in.DPoPProof != "":
		req.DPoP = &tokens.DPoPProof{Proof: in.DPoPProof, Method: in.DPoPMethod, URL: in.DPoPURL}
	case in.DPoPMethod != "" || in.DPoPURL != "":
		return tokens.RefreshRequest{}, domain.Errorf(domain.EInvalidRequest, "dpop_htm and dpop_htu go with dpop_proof")
	}
	return req, nil
}

// ParseRevoke decodes tokens.cmd.revoke and checks it names exactly one
// selector and a valid reason.
func ParseRevoke(data []byte) (wire.RevokeRequest, error) {
	var in wire.RevokeRequest
	if err := Decode(data, &in); err != nil {
		return wire.RevokeRequest{}, err
	}
	selectors := 0
	for _, sel := range []struct {
		name  string
		value *string
	}{{"refresh_token", in.RefreshToken}, {"family_id", in.FamilyID}, {"subject", in.Subject}, {"client_id", in.ClientID}} {
		if sel.value == nil {
			continue
		}
		selectors++
		if *sel.value == "" {
			return wire.RevokeRequest{}, domain.Errorf(domain.EInvalidRequest, "%s must not be empty", sel.name)
		}
		var err error
		switch sel.name {
		case "family_id":
			if !domain.ValidID(*sel.value) {
				err = domain.Errorf(domain.EInvalidRequest, "family_id is not a valid family id")
			}
		case "subject", "client_id":
			err = domain.ValidateName(sel.name, *sel.value)
		}
		if err != nil {
			return wire.RevokeRequest{}, err
		}
	}
	if selectors != 1 {
		return wire.RevokeRequest{}, domain.Errorf(domain.EInvalidRequest, "exactly one of refresh_token, family_id, subject, client_id is required")
	}
	if in.Reason != "" {
		if err := domain.ValidateName("reason", in.Reason); err != nil {
			return wire.RevokeRequest{}, err
		}
	}
	if err := domain.ValidateContext(in.Context); err != nil {
		return wire.RevokeRequest{}, err
	}
	return in, nil
}

// auditFilter validates an audit request into a filter.
func auditFilter(in wire.AuditRequest) (projections.AuditFilter, error) {
	f := projections.AuditFilter{FamilyID: in.FamilyID, Subject: in.Subject, ClientID: in.ClientID,
		PresentedBy: in.PresentedBy, AfterSeq: in.AfterSeq, Limit: wire.DefaultAuditLimit}
	for _, field := range [...]struct{ name, value string }{{"family_id", in.FamilyID}, {"subject", in.Subject},
		{"client_id", in.ClientID}, {"presented_by", in.PresentedBy}} {
		if field.value != "" {
			if err := domain.ValidateName(field.name, field.value); err != nil {
				return f, err
			}
		}
	}
	if len(in.Types) > len(events.Types) {
		return f, domain.Errorf(domain.EInvalidRequest, "too many types")
	}
	for _, t := range in.Types {
		if !events.KnownType(t) {
			return f, domain.Errorf(domain.EInvalidRequest, "unknown event type %q", truncate(t))
		}
	}
	f.Types = in.Types
	var err error
	if f.Since, err = parseTime("since", in.Since); err != nil {
		return f, err
	}
	if f.Until, err = parseTime("until", in.Until); err != nil {
		return f, err
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return f, domain.Errorf(domain.EInvalidRequest, "since must be before until")
	}
	if in.Limit != nil {
		if *in.Limit < 1 || *in.Limit > wire.MaxAuditLimit {
			return f, domain.Errorf(domain.EInvalidRequest, "limit must be 1..%d", wire.MaxAuditLimit)
		}
		f.Limit = *in.Limit
	}
	if in.AfterSeq > 1<<63-1 || in.MinSeq > 1<<63-1 {
		return f, domain.Errorf(domain.EInvalidRequest, "after_seq and min_seq must fit in 63 bits")
	}
	return f, nil
}

func parseTime(field, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, domain.Errorf(domain.EInvalidRequest, "%s must be an RFC 3339 time", field)
	}
	return t, nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40]
	}
	return s
}

func ptr[T any](v T) *T { return &v }
