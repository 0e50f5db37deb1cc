package signals

import (
	"strings"
	"testing"

	"github.com/tokend/tokend/domain"
)

func TestDecodeSubject(t *testing.T) {
	valid := []string{
		`{"format":"email","email":"jdoe@example.com"}`,
		`{"format":"iss_sub","iss":"https://tokend.example","sub":"user-42"}`,
		`{"format":"opaque","id":"Vq3xJ2mF0kq9Xb1cD4eF5g"}`,
		`{"format":"phone_number","phone_number":"+12065550100"}`,
		`{"format":"account","uri":"acct:jdoe@example.com"}`,
		`{"format":"uri","uri":"https://example.com/jdoe"}`,
		`{"format":"did","url":"did:example:123"}`,
		`{"format":"jwt_id","iss":"https://tokend.example","jti":"abc"}`,
		`{"format":"saml_assertion_id","issuer":"https://idp.example","assertion_id":"_8e8d"}`,
		`{"format":"ip-addresses","ip-addresses":["10.29.37.75","2001:db8::1"]}`,
		`{"format":"aliases","identifiers":[{"format":"email","email":"a@example.com"},{"format":"opaque","id":"x"}]}`,
		`{"format":"complex","user":{"format":"iss_sub","iss":"https://tokend.example","sub":"u"},"session":{"format":"opaque","id":"f"}}`,
	}
	for _, data := range valid {
		if _, err := DecodeSubject([]byte(data)); err != nil {
			t.Errorf("%s: %v", data, err)
		}
	}
	invalid := []string{
		``, `[]`, `{}`, `{"format":"email"}`,
		`{"format":"carrier_pigeon","id":"x"}`,
		`{"format":"email","email":"a@example.com","sub":"u"}`,        // a member of another format
		`{"format":"email","email":"a@example.com","nickname":"jd"}`,  // a member of no format
		`{"format":"iss_sub","iss":"https://tokend.example"}`,         // a required member missing
		`{"format":"opaque","id":"a\u0000b"}`,                         // control character
		`{"format":"opaque","id":"` + strings.Repeat("x", 257) + `"}`, // too long a member
		`{"format":"ip-addresses","ip-addresses":["not an address"]}`, // not an address
		`{"format":"ip-addresses","ip-addresses":[]}`,                 // empty
		`{"format":"aliases","identifiers":[{"format":"aliases","identifiers":[]}]}`,
		`{"format":"complex"}`,          // no member
		`{"format":"complex","id":"x"}`, // a simple member
		`{"format":"complex","user":{"format":"complex","user":{"format":"opaque","id":"x"}}}`,
		`{"format":"complex","user":{"format":"email"}}`,
		`{"format":"opaque","id":"x","user":{"format":"opaque","id":"y"}}`,
		`{"format":"opaque","id":"` + strings.Repeat("x", 2000) + `"}`,
	}
	for _, data := range invalid {
		_, err := DecodeSubject([]byte(data))
		if domain.ErrorCode(err) != domain.EInvalidRequest {
			t.Errorf("%s: %v, want invalid_request", data, err)
		}
	}
}

func TestSubjectMatches(t *testing.T) {
	user := IssSub("https://tokend.example", "user-42")
	other := IssSub("https://tokend.example", "user-7")
	session, app := Opaque("fam-1"), Opaque("web-app")
	event := Subject{Format: FormatComplex, User: &user, Session: &session, Application: &app}
	tenant := Opaque("t-1")
	group1, group2 := Subject{Format: FormatDID, URL: "did:example:1"}, Subject{Format: FormatDID, URL: "did:example:2"}
	tests := []struct {
		name      string
		given     Subject
		withEvent Subject
		want      bool
	}{
		{"equal simple subjects", user, IssSub("https://tokend.example", "user-42"), true},
		{"different simple subjects", user, other, false},
		{"the same identifier at another issuer", user, IssSub("https://other.example", "user-42"), false},
		{"a simple subject in a complex event", user, event, true},
		{"a complex subject against a simple event", event, user, true},
		{"a simple subject in no member", other, event, false},
		{"a less restrictive complex subject (SSF 8.1.3.1, first example)", Subject{Format: FormatComplex, User: &user}, event, true},
		{"a more restrictive complex subject (second example)",
			Subject{Format: FormatComplex, User: &user, Device: &tenant}, Subject{Format: FormatComplex, User: &user}, true},
		{"a member differs (third example)",
			Subject{Format: FormatComplex, User: &user, Group: &group1}, Subject{Format: FormatComplex, User: &user, Group: &group2}, false},
		{"no member in common", Subject{Format: FormatComplex, Tenant: &tenant}, event, false},
		{"the session alone", Subject{Format: FormatComplex, Session: &session}, event, true},
	}
	for _, tc := range tests {
		if got := tc.given.Matches(tc.withEvent); got != tc.want {
			t.Errorf("%s: Matches = %v, want %v", tc.name, got, tc.want)
		}
	}
}
