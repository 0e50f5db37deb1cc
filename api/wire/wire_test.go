package wire

import (
	"encoding/json"
	"testing"
)

// TestIntrospectionConfirmsTheKey: an introspection of a token of a bound
// family answers RFC 9449 section 6.2's cnf, {"jkt": …}; a bearer family's
// leaves the member out.
func TestIntrospectionConfirmsTheKey(t *testing.T) {
	const jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
	for _, tc := range []struct{ jkt, want string }{
		{jkt, `{"active":true,"token_type":"refresh_token","cnf":{"jkt":"` + jkt + `"},"as_of_seq":3}`},
		{"", `{"active":true,"token_type":"refresh_token","as_of_seq":3}`},
	} {
		got, err := json.Marshal(Introspection{Active: true, TokenType: "refresh_token", Cnf: ConfirmationOf(tc.jkt), AsOfSeq: 3})
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want {
			t.Errorf("bound to %q:\ngot  %s\nwant %s", tc.jkt, got, tc.want)
		}
	}
}
