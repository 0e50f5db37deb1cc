package ssfreceiver

import (
	"encoding/json"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
)

// TestImportsNothingOfTokend: the receiver is written from the
// specifications, not from tokend's code, so it proves what it verifies
// independently of it.
func TestImportsNothingOfTokend(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	for _, f := range files {
		parsed, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range parsed.Imports {
			if strings.HasPrefix(strings.Trim(imp.Path.Value, `"`), "github.com/tokend/tokend") {
				t.Errorf("%s imports %s", f, imp.Path.Value)
			}
		}
	}
}

// TestConnectChecksTheIssuer: metadata naming another issuer than the one
// asked is not used (SSF 1.0 section 7.2.4, RFC 8414 section 3.3).
func TestConnectChecksTheIssuer(t *testing.T) {
	var ssfIssuer, asIssuer string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/.well-known/ssf-configuration/tenant":
			_ = json.NewEncoder(w).Encode(map[string]string{"issuer": ssfIssuer, "jwks_uri": ssfIssuer + "/jwks"})
		case "/.well-known/oauth-authorization-server/tenant":
			_ = json.NewEncoder(w).Encode(map[string]string{"issuer": asIssuer, "token_endpoint": asIssuer + "/token"})
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	issuer := srv.URL + "/tenant"
	for _, tc := range []struct{ ssf, as, wantErr string }{
		{srv.URL, issuer, "SSF configuration names issuer"},
		{issuer, srv.URL, "authorization server metadata"},
		{issuer, issuer, ""},
	} {
		ssfIssuer, asIssuer = tc.ssf, tc.as
		r, err := Connect(t.Context(), Config{Issuer: issuer, ClientID: "rc", ClientSecret: "s", HTTPClient: srv.Client()})
		switch {
		case tc.wantErr == "" && (err != nil || r.Transmitter.JWKSURI != issuer+"/jwks"):
			t.Errorf("ssf %s, as %s: %v", tc.ssf, tc.as, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("ssf %s, as %s: %v, want %q", tc.ssf, tc.as, err, tc.wantErr)
		}
	}
}
