package api

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
)

func TestParseIssue(t *testing.T) {
	got, err := ParseIssue([]byte(`{"subject":"user-42","client_id":"web-app","scope":"openid  api:read openid",
		"audience":["https://a.example","https://b.example","https://a.example"],"context":{"ip":"203.0.113.7"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got.Scope, ",") != "openid,api:read" || len(got.Audience) != 2 || got.Context["ip"] != "203.0.113.7" {
		t.Fatalf("parsed %+v", got)
	}
	for _, bad := range []string{
		`{"subject":"u"}`,
		`{"subject":"u","client_id":"c","audience":[""]}`,
		`{"subject":"u","client_id":"c","audience":["https://a b"]}`,
		`{"subject":"u","client_id":"c","context":{"":"x"}}`,
		`{"subject":"u","client_id":"c","context":{"k":"` + strings.Repeat("v", 513) + `"}}`,
		`[]`,
		`null`,
	} {
		if _, err := ParseIssue([]byte(bad)); domain.ErrorCode(err) != domain.EInvalidRequest {
			t.Errorf("%s: got %v, want invalid_request", bad, err)
		}
	}
}

func TestParseRefreshScope(t *testing.T) {
	for body, wantNil := range map[string]bool{
		`{"refresh_token":"t","client_id":"c"}`:               true,
		`{"refresh_token":"t","client_id":"c","scope":""}`:    true,
		`{"refresh_token":"t","client_id":"c","scope":"a b"}`: false,
	} {
		got, err := ParseRefresh([]byte(body))
		if err != nil || (got.Scope == nil) != wantNil {
			t.Errorf("%s: scope %v, err %v", body, got.Scope, err)
		}
	}
}

func TestParseRevokeSelectors(t *testing.T) {
	for body, ok := range map[string]bool{
		`{"family_id":"f"}`:                        true,
		`{"subject":"u","reason":"user_disabled"}`: true,
		`{"client_id":"web-app"}`:                  true,
		`{"refresh_token":"anything"}`:             true, // any non-empty token: unknown ones revoke nothing
		`{}`:                                       false,
		`{"family_id":"f","subject":"u"}`:          false,
		`{"family_id":"f","reason":"a\nb"}`:        false,
		`{"family_id":"a.b"}`:                      false,
		`{"subject":"a\u0000b"}`:                   false,
	} {
		if _, err := ParseRevoke([]byte(body)); (err == nil) != ok {
			t.Errorf("%s: err %v", body, err)
		}
	}
	// An empty selector is refused by name, not counted as "none given".
	for _, field := range []string{"refresh_token", "family_id", "subject", "client_id"} {
		_, err := ParseRevoke([]byte(`{"` + field + `":""}`))
		if domain.ErrorCode(err) != domain.EInvalidRequest || domain.ErrorMessage(err) != field+" must not be empty" {
			t.Errorf("empty %s: %v", field, err)
		}
	}
}

// FuzzParseCommands: any input either parses into a command within the
// limits or is refused with invalid_request; nothing panics.
func FuzzParseCommands(f *testing.F) {
	for _, seed := range []string{
		`{"subject":"user-42","client_id":"web-app","scope":"openid profile","audience":["https://api.example.com"],"context":{"ip":"203.0.113.7"}}`,
		`{"refresh_token":"rt1.abc.2.kid.secret.mac","client_id":"web-app","scope":"api:read","audience":"https://api.example.com"}`,
		`{"family_id":"abc","reason":"user_disabled"}`,
		`{"subject":"u","client_id":"c"} trailing`,
		`{"subject":"\u0000","client_id":"c"}`,
		"{\"subject\":\"\xff\"}",
		`{"context":{"a":{"b":{"c":1}}}}`,
		`[[[[[[[[[[[[]]]]]]]]]]]]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(err error) bool {
			if err != nil {
				if code := domain.ErrorCode(err); code != domain.EInvalidRequest {
					t.Fatalf("error code %s for %q", code, data)
				}
				return false
			}
			if !utf8.Valid(data) || len(data) > wire.MaxRequestBytes {
				t.Fatalf("accepted invalid input %q", data)
			}
			return true
		}
		if req, err := ParseIssue(data); check(err) {
			if len(req.Scope) > domain.MaxScopes || len(req.Audience) > domain.MaxAudiences || domain.ValidateName("subject", req.Subject) != nil {
				t.Fatalf("issue outside the limits accepted: %+v", req)
			}
		}
		if req, err := ParseRefresh(data); check(err) {
			if req.Token == "" || domain.ValidateName("client_id", req.ClientID) != nil {
				t.Fatalf("refresh accepted without token or client: %+v", req)
			}
		}
		if req, err := ParseRevoke(data); check(err) && len(req.Reason) > domain.MaxNameBytes {
			t.Fatalf("revoke accepted an oversized reason")
		}
	})
}

// TestAuditFilterPresentedBy: presented_by reaches the read model's filter
// beside client_id (the owner), and a value is refused exactly when it
// would be as a client_id.
func TestAuditFilterPresentedBy(t *testing.T) {
	var in wire.AuditRequest
	if err := Decode([]byte(`{"presented_by":"evil-app","client_id":"web-app","types":["refresh.rejected"]}`), &in); err != nil {
		t.Fatal(err)
	}
	f, err := auditFilter(in)
	if err != nil || f.PresentedBy != "evil-app" || f.ClientID != "web-app" || len(f.Types) != 1 {
		t.Fatalf("filter %+v, %v", f, err)
	}
	for _, value := range []string{"evil-app", "ünï côdé", "", "a\u0000b", "a\nb", "\u00ad", strings.Repeat("c", domain.MaxNameBytes),
		strings.Repeat("c", domain.MaxNameBytes+1)} {
		_, asClient := auditFilter(wire.AuditRequest{ClientID: value})
		_, asPresenter := auditFilter(wire.AuditRequest{PresentedBy: value})
		if domain.ErrorCode(asPresenter) != domain.ErrorCode(asClient) ||
			asPresenter != nil && domain.ErrorCode(asPresenter) != domain.EInvalidRequest {
			t.Errorf("presented_by %q: %v; as client_id: %v", value, asPresenter, asClient)
		}
	}
	for _, body := range []string{`{"presented_by":7}`, `{"presented_by":["evil-app"]}`, `{"presented_by":null,"presenter":"x"}`} {
		if err := Decode([]byte(body), &wire.AuditRequest{}); domain.ErrorCode(err) != domain.EInvalidRequest {
			t.Errorf("%s: %v, want invalid_request", body, err)
		}
	}
	// A request without the filter is one a tokend without it accepts.
	if body, _ := json.Marshal(wire.AuditRequest{ClientID: "web-app"}); strings.Contains(string(body), "presented_by") {
		t.Errorf("request without a presenter: %s", body)
	}
}

// TestAuditQueryPresentedBy: GET /v1/audit takes presented_by once, with
// the other parameters; unknown parameters are still refused.
func TestAuditQueryPresentedBy(t *testing.T) {
	q, _ := url.ParseQuery("presented_by=evil-app&type=refresh.rejected&since=2026-12-01T00:00:00Z&after_seq=4&limit=2")
	in, err := auditRequestFromQuery(q)
	if err != nil || in.PresentedBy != "evil-app" || in.ClientID != "" || len(in.Types) != 1 || in.AfterSeq != 4 || *in.Limit != 2 {
		t.Fatalf("request %+v, %v", in, err)
	}
	for _, raw := range []string{"presented_by=a&presented_by=b", "presented-by=evil-app", "presenter=evil-app",
		"presented_by=a%00b", "presented_by=" + strings.Repeat("c", domain.MaxNameBytes+1)} {
		q, _ := url.ParseQuery(raw)
		in, err := auditRequestFromQuery(q)
		if err == nil {
			_, err = auditFilter(in)
		}
		if domain.ErrorCode(err) != domain.EInvalidRequest {
			t.Errorf("%s: %v, want invalid_request", raw, err)
		}
	}
}
