package api

import (
	"net/url"
	"testing"
	"unicode/utf8"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
)

// FuzzParseQueries: any query body either decodes into a request whose
// filter is within the contract's limits or is refused with
// invalid_request; nothing panics.
func FuzzParseQueries(f *testing.F) {
	for _, seed := range []string{
		`{"family_id":"abc","subject":"user-42","client_id":"web-app","types":["token.rotated","family.revoked"],"since":"2026-11-01T00:00:00Z","until":"2026-11-02T00:00:00Z","limit":10,"after_seq":5,"min_seq":7}`,
		`{"limit":0}`, `{"limit":1001}`, `{"limit":1.5}`, `{"types":["nope"]}`, `{"since":"yesterday"}`,
		`{"since":"2026-11-02T00:00:00Z","until":"2026-11-01T00:00:00Z"}`, `{"after_seq":-1}`,
		`{"after_seq":18446744073709551615}`, `{"refresh_token":"rt1.x","min_seq":3}`, `{"family_id":"f"}`,
		`{"types":[` + `"token.issued",` + `"token.issued"]}`, "{\"subject\":\"\xff\"}", `{"subject":"a\u0000b"}`,
		`{"presented_by":"evil-app","client_id":"web-app","types":["refresh.rejected"],"since":"2026-11-01T00:00:00Z","after_seq":3}`,
		`{"presented_by":""}`, `{"presented_by":"a\u0000b"}`, `{"presented_by":7}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var audit wire.AuditRequest
		if err := Decode(data, &audit); err == nil {
			filter, err := auditFilter(audit)
			switch {
			case err != nil && domain.ErrorCode(err) != domain.EInvalidRequest:
				t.Fatalf("audit filter error %v for %q", err, data)
			case err == nil && (filter.Limit < 1 || filter.Limit > wire.MaxAuditLimit || !utf8.Valid(data)):
				t.Fatalf("audit filter outside the limits accepted: %+v", filter)
			case err == nil && !filter.Since.IsZero() && !filter.Until.IsZero() && !filter.Since.Before(filter.Until):
				t.Fatalf("empty time range accepted: %+v", filter)
			}
		} else if domain.ErrorCode(err) != domain.EInvalidRequest {
			t.Fatalf("decode error %v for %q", err, data)
		}
		for _, v := range []any{&wire.IntrospectRequest{}, &wire.FamilyRequest{}} {
			if err := Decode(data, v); err != nil && domain.ErrorCode(err) != domain.EInvalidRequest {
				t.Fatalf("decode error %v for %q", err, data)
			}
		}
	})
}

// FuzzAuditQueryString: GET /v1/audit's parameters are validated like the
// NATS request; whatever the query string, the answer is a request or
// invalid_request.
func FuzzAuditQueryString(f *testing.F) {
	for _, seed := range []string{
		"family_id=abc&type=token.rotated&type=family.revoked&since=2026-11-01T00:00:00Z&limit=10&after_seq=3&min_seq=4",
		"limit=0", "limit=abc", "after_seq=-1", "family_id=a&family_id=b", "bogus=1", "type=nope", "%zz", "since=%00",
		"presented_by=evil-app&type=refresh.rejected&until=2026-11-02T00:00:00Z&after_seq=3", "presented_by=a&presented_by=b",
		"presented_by=%00",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return // net/http would not get this far
		}
		in, err := auditRequestFromQuery(q)
		if err == nil {
			_, err = auditFilter(in)
		}
		if err != nil && domain.ErrorCode(err) != domain.EInvalidRequest {
			t.Fatalf("error %v for %q", err, raw)
		}
	})
}
